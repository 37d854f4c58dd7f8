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
    # Haystack text: these sources of the recipe's `data.build.sources` (read with the data
    # pipeline's readers, tokenized with `data.build.tokenizer`); sample k of a cell takes the
    # (k + cell * samples_per_cell)-th of them, round robin, so every language is covered.
    haystack_sources: list[str] = field(
        default_factory=lambda: ["en", "ko", "es", "de", "ja", "vi"])
    # Needle, question and answer. {key}: a random "xxxx-xxxx" hex key, {value}: a random
    # 5-digit number, both drawn from `seed`. The sample ends with question + answer; the
    # answer (its tokens) is what the model must produce.
    needle_template: str = "The special magic number for {key} is {value}."
    question_template: str = "\nQuestion: What is the special magic number for {key}?\nAnswer:"
    answer_template: str = " {value}"
    # samples per forward pass; None = the recipe's train.micro_batch_samples (what training
    # fits at this sequence length also fits a forward without gradients)
    micro_batch_samples: int | None = None
