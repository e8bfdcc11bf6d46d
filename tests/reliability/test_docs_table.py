"""Every test that docs/reliability.md names exists, and every reliability test is named there."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "reliability.md"
NAMED = re.compile(r"`(tests/[\w/]+\.py)::(\w+)`")


def _test_functions(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return {node.name for node in tree.body if isinstance(node, ast.FunctionDef) and node.name.startswith("test_")}


def test_every_test_named_in_the_table_exists():
    named = NAMED.findall(DOC.read_text(encoding="utf-8"))
    assert len(named) >= 40
    missing = [f"{file}::{name}" for file, name in named
               if not (ROOT / file).is_file() or name not in _test_functions(ROOT / file)]
    assert not missing, f"docs/reliability.md names tests that do not exist: {missing}"


def test_every_reliability_test_is_in_the_table():
    named = set(NAMED.findall(DOC.read_text(encoding="utf-8")))
    here = Path(__file__).resolve().parent
    absent = [f"{path.name}::{name}" for path in sorted(here.glob("test_rel_*.py"))
              for name in sorted(_test_functions(path))
              if (str(path.relative_to(ROOT)), name) not in named]
    assert not absent, f"add these tests to docs/reliability.md: {absent}"
