"""User functions for the ``[functions]`` tests."""

from __future__ import annotations


def score(amount: float) -> float:
    if amount < 0:
        raise ValueError("negative amounts cannot be scored")
    return amount * amount


def slow(value: float) -> float:
    """Identity, slowly: keeps a query behind its input in crash tests."""
    import time

    time.sleep(0.001)
    return value
