"""The benchmark's task shapes: the same extraction items (a person and a city from a sentence, answered as JSON) put
in the shapes users train on. Both sides import this file (no reft import: the peer venv has no reft).

========================  ==============================================  ==============  =================
shape                     prompt (through SmolLM2's chat template)        prompt tokens   response tokens
========================  ==============================================  ==============  =================
``extraction``            the template's default system prompt (~30       ~50             ~13
                          tokens, shared by every example) + instruction
                          + sentence (today's task, examples/)
``short``                 a 4-token system prompt + the sentence          ~25             ~13
``long_prompt``           the default system prompt + a ~250-token        ~300            ~13
                          passage (filler sentences, then the sentence)
``long_response``         the short system prompt + the sentence          ~25             ~200
                          answered by a ~200-token form letter
========================  ==============================================  ==============  =================

``task(shape)`` gives an object with ``make_task(seed, n_train, n_heldout)`` → (train, heldout) lists of
``{"prompt", "response"}``, ``render(tokenizer, prompt)`` → the chat-templated prompt, ``exact_match`` and ``EOS``
(as examples/extraction_task.py, whose items, pools and held-out split every shape reuses), and ``answer_tokens``,
the new-token budget of held-out generation, and ``heldout``, how many held-out items are scored.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "examples"))
import extraction_task as base  # noqa: E402

SHAPES = ("extraction", "short", "long_prompt", "long_response")
SHORT_SYSTEM = "Answer as JSON."
FILLER = [
    "The committee met twice before the end of the quarter.", "Prices of fresh fruit rose a little in the autumn.",
    "A new bridge over the river is planned for next year.", "Most of the shops close early on public holidays.",
    "The weather report promised a dry and windy weekend.", "Several trains were delayed by repairs to the line.",
    "Volunteers cleaned the park after the summer festival.", "The museum extended its opening hours in July.",
    "A small orchestra played in the square every evening.", "The library bought two hundred new books this month.",
    "Road works on the main avenue will last until spring.", "The school garden grew tomatoes, beans and squash.",
]
LETTER = ("Dear {name},\n\nThank you for registering with our community service. We have recorded {city} as your "
          "home city, and from now on every notice about events, meetings and local news for {city} will be sent to "
          "you by post and by email. Our volunteers in {city} organise a market on the first Saturday of each "
          "month, a reading group on Wednesday evenings and a walking tour of the old town every Sunday morning. "
          "If you would like to take part in any of these, {name}, please reply to this letter or call the office "
          "during opening hours, from nine in the morning to five in the afternoon, Monday to Friday. New members "
          "often ask how to reach us: the office is next to the central station of {city}, on the second floor, "
          "and the entrance is on the side street. Bring this letter with you on your first visit, so that we can "
          "give you your membership card and a map of the district. We look forward to meeting you soon.\n\n"
          "With kind regards,\nThe {city} community office")


def _short_render(tokenizer, prompt: str) -> str:
    turns = [{"role": "system", "content": SHORT_SYSTEM}, {"role": "user", "content": prompt}]
    return tokenizer.apply_chat_template(turns, add_generation_prompt=True, tokenize=False)


def _sentence(item: dict) -> str:
    return item["prompt"].removeprefix(base.INSTRUCTION)


def _reshape(items: list[dict], shape: str, rng: random.Random) -> list[dict]:
    out = []
    for item in items:
        fields = json.loads(item["response"])
        if shape == "short":
            out.append({"prompt": _sentence(item), "response": item["response"]})
        elif shape == "long_prompt":
            filler = [FILLER[rng.randrange(len(FILLER))] for _ in range(25)]
            passage = " ".join(filler) + " " + _sentence(item)
            out.append({"prompt": base.INSTRUCTION + passage, "response": item["response"]})
        elif shape == "long_response":
            out.append({"prompt": _sentence(item), "response": LETTER.format(**fields)})
        else:
            out.append(item)
    return out


def task(shape: str) -> SimpleNamespace:
    """The task of ``shape`` (one of :data:`SHAPES`)."""
    if shape not in SHAPES:
        raise ValueError(f"unknown shape {shape!r}: one of {', '.join(SHAPES)}")

    def make_task(seed: int = 0, n_train: int = 256, n_heldout: int = 64) -> tuple[list[dict], list[dict]]:
        train, heldout = base.make_task(seed=seed, n_train=n_train, n_heldout=n_heldout)
        rng = random.Random(seed + 1)
        return _reshape(train, shape, rng), _reshape(heldout, shape, rng)

    render = base.render if shape in ("extraction", "long_prompt") else _short_render
    long = shape in ("long_prompt", "long_response")
    # held-out answers are generated up to the longest response (+ EOS and slack); long shapes score 64 of them
    return SimpleNamespace(make_task=make_task, render=render, exact_match=base.exact_match, EOS=base.EOS,
                           name=shape, answer_tokens=256 if shape == "long_response" else 32,
                           heldout=64 if long else 256)
