"""Two classifiers on the same test images, compared image by image: the exact McNemar test.

With 100 test images one image is a point, so whether two accuracies differ beyond chance rests on the
images on which exactly one of the two is right (McNemar, 1947), not on the two means.
A run's per-image outcome travels in its report as a string of "1" (right) and "0" (wrong).
"""

from __future__ import annotations

import math
from typing import Iterable


def hits_string(correct: Iterable[bool]) -> str:
    return "".join("1" if c else "0" for c in correct)


def discordant(ours: str, reference: str) -> tuple[int, int]:
    """(images only ours gets right, images only the reference gets right), over the same test images."""
    if len(ours) != len(reference):
        raise ValueError(f"compared on different test sets: {len(ours)} and {len(reference)} images")
    pairs = list(zip(ours, reference))
    return pairs.count(("1", "0")), pairs.count(("0", "1"))


def mcnemar_p(wins: int, losses: int) -> float:
    """Two-sided exact McNemar p: under "equally good", each discordant image is a fair coin."""
    n = wins + losses
    tail = sum(math.comb(n, k) for k in range(min(wins, losses) + 1))
    return min(1.0, 2 * tail / 2**n)
