"""Loaders of the task suite on the real shared data: counts, prompt format, gold labels, registry.

Tests marked ``needs_data`` assert facts of the real files (``REFT_DATA`` or ``../shared/data``); without them they
skip with that reason (``REFT_REQUIRE_DATA=1``, set by CI, makes that an error) and the rest run on the synthetic
stand-in of ``tests/mini_data.py``.
"""

from __future__ import annotations

import pytest

from reft.harness.tasks import TASKS, TaskSpec, data_root, get_task, task_names
from reft.harness.tasks.metrics import commonsense_labels

# (task, split) -> rows, from /work/shared/data/MANIFEST.md (file row counts).
EXPECTED_COUNTS = {
    ("boolq", "train"): 9427,
    ("boolq", "test"): 3270,
    ("piqa", "test"): 1838,
    ("siqa", "test"): 1954,
    ("hellaswag", "dev"): 4000,
    ("hellaswag", "test"): 10042,
    ("winogrande", "test"): 1267,
    ("arc_e", "train"): 2251,
    ("arc_e", "test"): 2376,
    ("arc_c", "train"): 1119,
    ("arc_c", "test"): 1172,
    ("obqa", "train"): 4957,
    ("obqa", "test"): 500,
    ("aqua", "test"): 254,
    ("gsm8k", "train"): 7473,
    ("gsm8k", "test"): 1319,
    ("mawps", "test"): 238,
    ("svamp", "test"): 1000,
    ("addsub", "test"): 395,
    ("multiarith", "test"): 600,
    ("singleeq", "test"): 508,
    ("mathqa", "test"): 2985,
    ("math_data_3k", "train"): 3260 - 3,  # three rows have an empty rationale and are dropped
    ("math_10k", "dev"): 919,
    ("alpaca_eval", "test"): 805,
    ("ultrafeedback_1k", "train"): 1000,
}
GENERATION_SPLITS = sorted(EXPECTED_COUNTS)
RESPONSE_SUFFIX = "### Response:\n"


@pytest.fixture(scope="module")
def loaded() -> dict[tuple[str, str], list[dict]]:
    return {(task, split): get_task(task).load(split) for task, split in GENERATION_SPLITS}


def test_registry_covers_every_split() -> None:
    glue_families = ("glue", "glue_generation")  # the GLUE files (test_task_glue_split, test_task_glue_generation)
    generation = {name for name, spec in TASKS.items() if spec.family not in glue_families}
    assert generation == {task for task, _ in EXPECTED_COUNTS}
    for name, spec in TASKS.items():
        if spec.family not in glue_families:
            assert set(spec.splits) == {split for task, split in EXPECTED_COUNTS if task == name}
    assert set(task_names("glue")) == {"sst2", "cola", "mrpc", "stsb", "rte", "qnli"}
    assert set(task_names("glue_generation")) == {"sst2_gen", "cola_gen", "mrpc_gen", "rte_gen"}


def test_get_task_unknown_name_lists_known() -> None:
    with pytest.raises(ValueError, match="boolq"):
        get_task("hellaswag2")


def test_taskspec_is_frozen() -> None:
    spec = get_task("boolq")
    assert isinstance(spec, TaskSpec)
    with pytest.raises(AttributeError):
        spec.name = "x"  # type: ignore[misc]


@pytest.mark.needs_data
@pytest.mark.parametrize(("task", "split"), GENERATION_SPLITS)
def test_counts_and_prompt_format(loaded, task: str, split: str) -> None:
    examples = loaded[(task, split)]
    assert len(examples) == EXPECTED_COUNTS[(task, split)]
    spec = get_task(task)
    for example in examples:
        prompt, target = spec.format(example)
        assert prompt.startswith("Below is an instruction that describes a task.")
        assert prompt.endswith(RESPONSE_SUFFIX)
        assert example["instruction"] in prompt
        assert isinstance(target, str)
    if task != "alpaca_eval":  # two text-davinci-003 reference outputs are empty (rows 247, 504)
        assert all(spec.format(e)[1].strip() for e in examples)


@pytest.mark.parametrize(("task", "split"), [k for k in GENERATION_SPLITS if get_task(k[0]).family == "commonsense"])
def test_commonsense_gold_labels(loaded, task: str, split: str) -> None:
    labels = set(commonsense_labels(task))
    for example in loaded[(task, split)]:
        assert example["answer"] in labels
        assert example["answer"] in example["choices"]
        assert example["target"] == f"the correct answer is {example['answer']}"
        assert get_task(task).score(example["target"], example) == 1.0


@pytest.mark.parametrize(("task", "split"), [k for k in GENERATION_SPLITS if get_task(k[0]).family == "math"])
def test_math_gold_answers(loaded, task: str, split: str) -> None:
    spec = get_task(task)
    examples = loaded[(task, split)]
    for example in examples:
        answer = example["answer"].strip()
        assert answer in set("ABCDE") or float(answer) == float(answer)
        assert spec.score("I have no idea.", example) == 0.0
    # Targets should score as correct. Exceptions in the data: about 23% of the math_data_3k rationales end in a
    # wrong answer, and 4 of the 919 math_10k rationales name their letter without "The answer is".
    consistency = sum(spec.score(e["target"], e) for e in examples) / len(examples)
    assert consistency >= {"math_data_3k": 0.75, "math_10k": 0.99}.get(task, 1.0)


@pytest.mark.needs_data
def test_math_score_examples() -> None:
    gsm = get_task("gsm8k").load("test", limit=1)[0]  # gold 576
    assert gsm["answer"] == "576.0"
    assert get_task("gsm8k").score("So he needs 24 * 24 = 576 tiles.", gsm) == 1.0
    assert get_task("gsm8k").score("The answer is 576.5", gsm) == 0.0
    aqua = get_task("aqua").load("test", limit=1)[0]  # gold A
    assert get_task("aqua").score("The answer is (A).", aqua) == 1.0
    assert get_task("aqua").score("The answer is (D).", aqua) == 0.0


@pytest.mark.needs_data
def test_gsm8k_train_conversion() -> None:
    first = get_task("gsm8k").load("train", limit=1)[0]
    assert "<<" not in first["target"]
    assert first["target"].endswith("The answer is 72.")
    assert first["answer"] == "72"


def test_limit_takes_first_rows(loaded) -> None:
    assert get_task("piqa").load("test", limit=5) == loaded[("piqa", "test")][:5]
    with pytest.raises(ValueError):
        get_task("piqa").load("train")


def test_data_root_env_override(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("REFT_DATA", str(tmp_path))
    assert data_root() == tmp_path.resolve()
    monkeypatch.setenv("REFT_DATA", str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match="REFT_DATA"):
        data_root()
    with pytest.raises(FileNotFoundError, match="REFT_DATA"):
        get_task("boolq").load("test")


def test_default_data_root_has_manifest() -> None:
    assert (data_root() / "MANIFEST.md").is_file()
