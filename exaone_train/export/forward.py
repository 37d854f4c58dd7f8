"""Forward helpers shared by the parity tests and `exaone-train eval`: main-head logits of a
GPTModel (also one with an MTP block, whose forward otherwise insists on labels) and the mean
next-token loss over the tokenizer vocab (padded vocab rows excluded, as in HF)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

import torch


@contextlib.contextmanager
def main_head_only(model: Any) -> Iterator[None]:
    """Skip the MTP block for the duration (megatron-core runs MTP whenever the model has one,
    and then needs labels); the main head's logits do not depend on it."""
    saved = (getattr(model, "mtp_process", False), model.config.mtp_num_layers)
    model.mtp_process, model.config.mtp_num_layers = False, None
    try:
        yield
    finally:
        model.mtp_process, model.config.mtp_num_layers = saved


@torch.no_grad()
def lm_logits(model: Any, input_ids_BS: torch.Tensor) -> torch.Tensor:
    """Logits [b, s, V_padded] of a TP=PP=1 model for positions 0..s-1 (inputs moved to the
    model's device, `parallel.state.device()`)."""
    from exaone_train.parallel import state

    b, s = input_ids_BS.shape
    input_ids_BS = input_ids_BS.to(state.device())
    position_ids_BS = torch.arange(s, device=input_ids_BS.device).unsqueeze(0).expand(b, -1)
    with main_head_only(model):
        return model(input_ids_BS, position_ids_BS, None)


def next_token_loss(logits_BSV: torch.Tensor, input_ids_BS: torch.Tensor,
                    vocab_size: int) -> torch.Tensor:
    """Mean cross-entropy of token t+1 given tokens <= t, over the first `vocab_size` logits."""
    logits = logits_BSV[:, :-1, :vocab_size].float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, vocab_size),
                                             input_ids_BS[:, 1:].reshape(-1).to(logits.device))


def load_tokens(path: str, vocab_size: int) -> torch.Tensor:
    """Token ids [batch, seq] from a .npy file (1-D = one sequence); DataError if malformed."""
    import numpy as np

    from exaone_train.errors import DataError

    try:
        arr = np.load(path, allow_pickle=False)
    except (OSError, ValueError) as e:
        raise DataError(f"{path}: cannot read a .npy token array ({e})") from None
    if arr.ndim not in (1, 2) or not np.issubdtype(arr.dtype, np.integer):
        raise DataError(f"{path}: expected integer tokens of shape [seq] or [batch, seq], got "
                        f"{arr.dtype} {arr.shape}")
    ids = torch.from_numpy(arr.astype(np.int64)).reshape(-1, arr.shape[-1])
    if ids.shape[1] < 2:
        raise DataError(f"{path}: sequences need at least 2 tokens, got {ids.shape[1]}")
    if ids.min() < 0 or ids.max() >= vocab_size:
        raise DataError(f"{path}: token ids must lie in [0, {vocab_size}), got "
                        f"[{int(ids.min())}, {int(ids.max())}]")
    return ids


def evaluate_loss(ckpt_dir: str, tokens_path: str) -> dict:
    """Mean next-token loss of the tokens in `tokens_path` under the checkpoint (one process)."""
    import math

    from exaone_train.checkpoint.model_checkpoint import load_model_checkpoint, read_config
    from exaone_train.config.schema import ParallelConfig
    from exaone_train.errors import ConfigError

    m = read_config(ckpt_dir).model
    ids = load_tokens(tokens_path, m.vocab_size)
    if ids.shape[1] > m.max_position_embeddings:
        raise ConfigError("--tokens", list(ids.shape),
                          f"sequence longer than model.max_position_embeddings="
                          f"{m.max_position_embeddings}")
    cfg, model = load_model_checkpoint(ckpt_dir, parallel_cfg=ParallelConfig())
    model.eval()
    loss = next_token_loss(lm_logits(model, ids), ids, cfg.model.vocab_size).item()
    return {"loss": loss, "perplexity": math.exp(loss), "tokens": int(ids[:, 1:].numel()),
            "sequences": int(ids.shape[0]), "checkpoint": str(ckpt_dir)}
