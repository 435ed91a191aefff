"""The n-gram references of a token cache (summary.json's `floors`): unigram, bigrams and Kneser-Ney
n-grams to order 5, each counted on train and tuned on validation; `floor` names the strongest (the
lowest test loss), the one a model must beat."""
from __future__ import annotations

import re

_NAMES = {"unigram": "unigram", "interpolated_bigram": "interpolated bigram", "kneser_ney_bigram": "Kneser-Ney bigram"}


def name(key: str) -> str:
    ngram = re.fullmatch(r"kneser_ney_(\d+)gram", key)
    return f"Kneser-Ney {ngram.group(1)}-gram" if ngram else _NAMES.get(key, key.replace("_", " "))


def order(key: str, entry: dict) -> int:
    """The entry's n-gram order: its "order", else read from its name (floors written before it)."""
    if entry.get("order") is not None:
        return int(entry["order"])
    ngram = re.fullmatch(r"kneser_ney_(\d+)gram", key)
    return int(ngram.group(1)) if ngram else 1 if key == "unigram" else 2


def entries(floors: dict | None) -> list[tuple[str, dict]]:
    """(key, metrics) of every reference, by order, the stronger last within one order."""
    found = [(key, entry) for key, entry in (floors or {}).items()
             if isinstance(entry, dict) and entry.get("test_loss") is not None]
    return sorted(found, key=lambda item: (order(*item), -item[1]["test_loss"]))


def beaten(loss: float, floors: dict) -> str:
    """The highest-order reference `loss` is below on test, and the next order's it is not."""
    strongest: dict[int, tuple[str, dict]] = {}
    for key, entry in entries(floors):
        strongest[order(key, entry)] = (key, entry)  # the last of each order is its strongest
    orders = sorted(strongest)
    if not orders:
        return "-"
    below = [o for o in orders if loss < strongest[o][1]["test_loss"]]
    if not below:
        return f"none (not the {name(strongest[orders[0]][0])})"
    above = [o for o in orders if o > max(below)]
    top = name(strongest[max(below)][0])
    return f"{top}, not {name(strongest[above[0]][0])}" if above else f"{top} (every order)"
