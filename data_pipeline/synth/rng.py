"""Seeded, platform-independent random streams (never Python's salted `hash()`)."""

from __future__ import annotations

import hashlib
import random


def derive_seed(seed: int, *keys: object) -> int:
    """A 64-bit seed derived from `seed` and `keys` by SHA-256: stable across runs and hosts."""
    text = "/".join([str(seed), *map(str, keys)]).encode()
    return int.from_bytes(hashlib.sha256(text).digest()[:8], "little")


def sub_rng(seed: int, *keys: object) -> random.Random:
    """An independent `random.Random` for (seed, *keys)."""
    return random.Random(derive_seed(seed, *keys))
