"""Forward helpers shared by the parity tests and `exaone-train eval`: main-head logits of a
GPTModel (also one with an MTP block, whose forward otherwise insists on labels) and the mean
next-token loss over the tokenizer vocab (padded vocab rows excluded, as in HF)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch


@contextlib.contextmanager
def main_head_only(model: torch.nn.Module) -> Iterator[None]:
    """Skip the MTP block for the duration (megatron-core runs MTP whenever the model has one,
    and then needs labels); the main head's logits do not depend on it."""
    saved = (getattr(model, "mtp_process", False), model.config.mtp_num_layers)
    model.mtp_process, model.config.mtp_num_layers = False, None
    try:
        yield
    finally:
        model.mtp_process, model.config.mtp_num_layers = saved


@torch.no_grad()
def lm_logits(model: torch.nn.Module, input_ids_BS: torch.Tensor) -> torch.Tensor:
    """Logits [b, s, V_padded] of a TP=PP=1 model for positions 0..s-1."""
    b, s = input_ids_BS.shape
    position_ids_BS = torch.arange(s).unsqueeze(0).expand(b, -1)
    with main_head_only(model):
        return model(input_ids_BS, position_ids_BS, None)


def next_token_loss(logits_BSV: torch.Tensor, input_ids_BS: torch.Tensor,
                    vocab_size: int) -> torch.Tensor:
    """Mean cross-entropy of token t+1 given tokens <= t, over the first `vocab_size` logits."""
    logits = logits_BSV[:, :-1, :vocab_size].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab_size),
                                             input_ids_BS[:, 1:].reshape(-1))
