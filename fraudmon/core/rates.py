"""Precision, recall and alert rates with one convention everywhere: a rate over nothing (no flags, no frauds, no
decisions) is None, printed as `-`; never 0, and never a division by zero."""

from __future__ import annotations


def rate(part: int, whole: int) -> float | None:
    """`part / whole`, or None when `whole` is 0."""
    return part / whole if whole else None


def precision(caught: int, flagged: int) -> float | None:
    """Share of the flagged that were fraud; None with no flags."""
    return rate(caught, flagged)


def recall(caught: int, frauds: int) -> float | None:
    """Share of the frauds that were flagged; None with no frauds."""
    return rate(caught, frauds)


def shown(value: float | None, digits: int = 3) -> str:
    """`0.394`, or `-` for a rate over nothing."""
    return "-" if value is None else f"{value:.{digits}f}"
