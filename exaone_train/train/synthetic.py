"""A synthetic, learnable token stream with the data pipeline's StageDataset interface.

For smoke tests and benchmarks that must not depend on files (like megatron-core's mock
datasets). Never used unless a recipe says `train.data_source=synthetic`. Each document is an
arithmetic progression modulo the vocab with a per-document stride, so a tiny model can learn
to predict it and the loss falls visibly within a few dozen steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class SyntheticSample:
    tokens: np.ndarray  # int64 [seq_length + 1]
    loss_mask: np.ndarray  # float32 [seq_length]
    document_ids: np.ndarray  # int32 [seq_length]
    position_ids: np.ndarray  # int64 [seq_length]
    source: str = "synthetic"


class SyntheticStageDataset:
    def __init__(self, seq_length: int, vocab_size: int, seed: int, num_samples: int = 1 << 30,
                 active_vocab: int = 512,
                 min_doc_tokens: int = 16, strides: tuple[int, ...] = (1, 2, 3, 5, 7)) -> None:
        # documents use the first `active_vocab` ids above the 3 special ids, so the stream is
        # learnable by a tiny model in tens of steps
        self.seq_length, self.vocab_size, self.seed = seq_length, min(vocab_size, active_vocab + 3), seed
        self.num_samples, self.min_doc_tokens, self.strides = num_samples, min_doc_tokens, strides
        self.consumed_samples = 0

    def __getitem__(self, index: int) -> SyntheticSample:
        rng = np.random.default_rng([self.seed, index])
        n = self.seq_length + 1
        tokens = np.empty(n, dtype=np.int64)
        docs = np.empty(n, dtype=np.int32)
        pos = np.empty(n, dtype=np.int64)
        start, doc = 0, 0
        while start < n:
            length = int(rng.integers(self.min_doc_tokens, max(self.min_doc_tokens + 1, n // 2)))
            end = min(n, start + length)
            stride = int(rng.choice(self.strides))
            first = int(rng.integers(3, self.vocab_size))
            tokens[start:end] = 3 + (first + stride * np.arange(end - start)) % (self.vocab_size - 3)
            docs[start:end], pos[start:end] = doc, np.arange(end - start)
            start, doc = end, doc + 1
        return SyntheticSample(tokens, np.ones(self.seq_length, np.float32), docs[:-1], pos[:-1])

    def global_batch_indices(self, step: int, global_batch_samples: int) -> range:
        return range(step * global_batch_samples, (step + 1) * global_batch_samples)

    def rank_slice(self, indices, dp_rank: int, dp_size: int):
        per = len(indices) // dp_size
        return indices[dp_rank * per:(dp_rank + 1) * per]

    def advance(self, n: int) -> None:
        self.consumed_samples += n

    def state_dict(self) -> dict:
        return {"consumed_samples": self.consumed_samples}

    def load_state_dict(self, d: dict) -> None:
        self.consumed_samples = int(d["consumed_samples"])
