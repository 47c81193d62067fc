"""The built-in `pii` dataset: short synthetic English sentences that carry personal data.

Each sentence holds a name and some of: a place, a date, an amount, an account-like number. The label says
whether the writer reports a problem (1) or is satisfied (0), so a classifier has something real to learn while
the attack has private details to leak. Deterministic per seed; no download.
"""

from __future__ import annotations

import random

import datasets

FIRST = ["anna", "ben", "carla", "david", "elena", "frank", "grace", "hugo", "irene", "james", "karen", "liam",
         "maria", "noah", "olivia", "peter", "rosa", "samuel", "tara", "victor"]
LAST = ["smith", "jones", "garcia", "miller", "brown", "davis", "wilson", "moore", "taylor", "clark", "lewis",
        "walker", "young", "king", "scott", "green", "baker", "hall", "allen", "wright"]
PLACES = ["london", "paris", "berlin", "madrid", "boston", "chicago", "dublin", "vienna", "oslo", "denver",
          "seattle", "lisbon", "prague", "toronto", "sydney"]
MONTHS = ["january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december"]
THINGS = ["order", "payment", "transfer", "booking", "refund", "invoice", "delivery", "loan"]

POSITIVE = [
    "{name} from {place} was happy with the {thing} of {amount} dollars on {date}.",
    "{name} confirmed that account {account} received {amount} dollars on {date}.",
    "thanks to the team, {name} got the {thing} in {place} on {date}.",
    "{name} paid {amount} dollars from account {account} and everything worked.",
    "the {thing} for {name} in {place} arrived early and was perfect.",
]
NEGATIVE = [
    "{name} from {place} complained that the {thing} of {amount} dollars failed on {date}.",
    "{name} says account {account} was charged {amount} dollars twice on {date}.",
    "the {thing} for {name} in {place} never arrived and nobody answered.",
    "{name} lost {amount} dollars when account {account} was blocked on {date}.",
    "{name} is angry because the {thing} in {place} was cancelled on {date}.",
]

_SPLIT_SIZE = {"train": 2000, "dev": 200}
_SPLIT_OFFSET = {"train": 0, "dev": 1_000_003}


def _sentence(rng: random.Random, label: int) -> str:
    template = rng.choice(NEGATIVE if label else POSITIVE)
    return template.format(
        name=f"{rng.choice(FIRST)} {rng.choice(LAST)}",
        place=rng.choice(PLACES),
        thing=rng.choice(THINGS),
        amount=rng.randint(5, 9999),
        date=f"{rng.choice(MONTHS)} {rng.randint(1, 28)}",
        account=f"{rng.randint(1000, 9999)} {rng.randint(1000, 9999)}",
    )


def generate_pii(split: str = "train", seed: int = 0, size: int | None = None) -> datasets.Dataset:
    """``size`` sentences (train 2,000 / dev 200 by default); train and dev never share a generator stream."""
    n = size if size is not None else _SPLIT_SIZE[split]
    rng = random.Random(seed * 7919 + _SPLIT_OFFSET[split])
    labels = [rng.randint(0, 1) for _ in range(n)]
    texts = [_sentence(rng, label) for label in labels]
    return datasets.Dataset.from_dict({"text": texts, "label": labels})
