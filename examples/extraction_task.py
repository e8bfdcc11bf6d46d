"""The benchmark task: extract a person and a city from one sentence as a one-line JSON object.

    prompt:   Extract the person and the city as JSON: Last spring, Alice moved to Paris for a new job.
    response: {"name": "Alice", "city": "Paris"}

`make_task(seed)` returns (train, heldout), lists of {"prompt", "response"} built from fixed pools, seeded and
with no external data. Names, cities and sentence templates are split into disjoint train / held-out pools, so
every held-out item uses a name, a city and a sentence shape never seen in training.

Prompts are plain text. `render(tokenizer, prompt)` puts one through the model's chat template (user turn +
generation prompt); training text is `render(...) + response + EOS`. `exact_match(generated, response)` compares
the stripped generation, cut at the first EOS, with the response.
"""

from __future__ import annotations

import json
import random

EOS = "<|im_end|>"
INSTRUCTION = "Extract the person and the city as JSON: "

NAMES_TRAIN = [
    "Alice", "Bruno", "Chloe", "Daniel", "Emma", "Felix", "Grace", "Hugo", "Irene", "Jonas",
    "Karen", "Lucas", "Maria", "Nathan", "Olivia", "Pablo", "Rachel", "Simon", "Tara", "Victor",
    "Wendy", "Xavier", "Yusuf", "Zoe", "Adam", "Bella", "Carlos", "Diana", "Ethan", "Fiona",
    "George", "Hannah", "Ivan", "Julia", "Kevin", "Laura", "Martin", "Nina", "Oscar", "Paula",
]  # fmt: skip
NAMES_HELDOUT = [
    "Quentin", "Rosa", "Samuel", "Tessa", "Umar", "Vera", "Walter", "Yara", "Arthur", "Clara",
    "Dominic", "Elena", "Frank", "Helen", "Isaac", "Leila",
]  # fmt: skip
CITIES_TRAIN = [
    "Paris", "London", "Berlin", "Madrid", "Rome", "Vienna", "Prague", "Dublin", "Lisbon", "Oslo",
    "Stockholm", "Helsinki", "Warsaw", "Athens", "Cairo", "Nairobi", "Lagos", "Tokyo", "Seoul", "Beijing",
    "Mumbai", "Delhi", "Bangkok", "Jakarta", "Manila", "Sydney", "Toronto", "Chicago", "Boston", "Denver",
]  # fmt: skip
CITIES_HELDOUT = [
    "Amsterdam", "Brussels", "Budapest", "Copenhagen", "Munich", "Milan", "Lima", "Santiago", "Havana",
    "Montreal", "Seattle", "Dallas", "Istanbul", "Tehran", "Hanoi", "Melbourne",
]  # fmt: skip
TEMPLATES_TRAIN = [
    "Last spring, {name} moved to {city} for a new job.",
    "{name} has lived in {city} for almost ten years.",
    "After the conference in {city}, {name} flew home.",
    "The best bakery in {city} is run by {name}.",
    "{name} was born in {city} and still visits every summer.",
    "According to the letter, {name} will arrive in {city} on Monday.",
    "Yesterday {name} gave a talk at the university of {city}.",
    "In {city}, {name} opened a small bookshop near the river.",
    "{name} took the night train to {city}.",
    "Our new colleague, {name}, works from the office in {city}.",
]
TEMPLATES_HELDOUT = [
    "Rumour has it that {name} bought a flat in {city}.",
    "When {name} reached {city}, it was already raining.",
    "The marathon in {city} was won by {name} this year.",
    "{name} sent a postcard from {city} to the whole family.",
]


def response_for(name: str, city: str) -> str:
    return json.dumps({"name": name, "city": city})


def _items(rng: random.Random, n: int, names: list[str], cities: list[str], templates: list[str]) -> list[dict]:
    combos = [(a, b, c) for a in names for b in cities for c in templates]
    rng.shuffle(combos)
    if n > len(combos):
        raise ValueError(f"asked for {n} items, only {len(combos)} combinations")
    return [
        {"prompt": INSTRUCTION + t.format(name=a, city=b), "response": response_for(a, b)} for a, b, t in combos[:n]
    ]


def make_task(seed: int = 0, n_train: int = 256, n_heldout: int = 64) -> tuple[list[dict], list[dict]]:
    """(train, heldout): lists of {"prompt": str, "response": str}; held-out names/cities/templates are unseen."""
    rng = random.Random(seed)
    train = _items(rng, n_train, NAMES_TRAIN, CITIES_TRAIN, TEMPLATES_TRAIN)
    heldout = _items(rng, n_heldout, NAMES_HELDOUT, CITIES_HELDOUT, TEMPLATES_HELDOUT)
    return train, heldout


def render(tokenizer, prompt: str) -> str:
    """The prompt as the model sees it: chat template with one user turn and the assistant generation prompt."""
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False
    )


def exact_match(generated: str, response: str) -> bool:
    """Generated text (cut at the first EOS, stripped) equals the response."""
    return generated.split(EOS, 1)[0].strip() == response.strip()


if __name__ == "__main__":
    tr, ho = make_task()
    print(len(tr), len(ho))
    for ex in tr[:3] + ho[:3]:
        print(ex)
