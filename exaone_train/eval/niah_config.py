"""What a Needle-In-A-Haystack check measures and what counts as a green light. Values only:
the run lives in `exaone_train/eval/niah.py`; the curriculum's stage gates embed this."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NiahConfig:
    # context lengths in tokens (each <= the model's trained seq_length for the stage)
    lengths: list[int] = field(default_factory=lambda: [256])
    # needle position as a fraction of the haystack: 0.0 = start, 1.0 = end
    depths: list[float] = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    samples_per_cell: int = 4
    # green light: mean exact-match accuracy over the grid >= pass_accuracy and every cell
    # >= min_cell_accuracy
    pass_accuracy: float = 0.95
    min_cell_accuracy: float = 0.0
    seed: int = 0
