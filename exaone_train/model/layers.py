"""Modules our layer specs use where megatron-core's local ones do not fit.

- `RMSNorm`: megatron-core's torch norm refuses sequence parallelism; EXAONE 4.0's post-norms
  need a norm anyway. fp32 math, HF-style `weight * x_normed.to(dtype)`.
- `PostNormRowParallelLinear`: EXAONE 4.0's QK-Reorder-LN normalises the attention / MLP output
  before the residual add. Applying the norm to the row-parallel output (already reduced over
  TP) gives exactly that, and keeps megatron-core's TransformerLayer untouched.
- `LocalCoreAttention`: causal attention with HF sliding-window semantics and an optional
  document mask, for the CPU / local path. megatron-core's local DotProductAttention replaces
  any given mask with the window mask, so a packed sample's document mask would be lost (and
  it refuses context parallelism). Under CP it all-gathers K/V over the CP group
  (`exaone_train.parallel.context`) and masks on global positions.
"""

from __future__ import annotations

import math

import torch
from megatron.core.tensor_parallel.layers import RowParallelLinear
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import is_layer_window_attention

from exaone_train.parallel import state
from exaone_train.parallel.context import gather_sequence, load_balanced_positions


class RMSNorm(torch.nn.Module):
    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5) -> None:
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype,
                                                    device=state.device()))
        # Under sequence parallelism each TP rank sees other tokens: the grad must be summed
        # over TP (megatron-core's finalize_model_grads reads this attribute).
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class PostNormRowParallelLinear(RowParallelLinear):
    """RowParallelLinear followed by RMSNorm on its (TP-reduced) output."""

    def __init__(self, input_size: int, output_size: int, *, config: TransformerConfig, **kw):
        super().__init__(input_size, output_size, config=config, **kw)
        if self.bias is not None:
            raise ValueError("post-norm linear layers take no bias (EXAONE 4.0 has none)")
        self.post_norm = RMSNorm(config, output_size, eps=config.layernorm_epsilon)

    def forward(self, input_, *args, **kwargs):
        output, bias = super().forward(input_, *args, **kwargs)
        return self.post_norm(output), bias


class LocalCoreAttention(MegatronModule):
    """softmax(QK^T / sqrt(d) + mask) V with GQA, in fp32 softmax.

    Mask = causal AND (sliding window on window layers) AND NOT `attention_mask` (megatron
    convention: True = masked). Window semantics follow `config.window_size=(W-1, 0)`: key j is
    visible from query i iff i - (W-1) <= j <= i, i.e. HF's i - W < j <= i.

    Context parallelism (the CP group of `pg_collection` has size > 1): q/k/v hold this rank's
    load-balanced chunks (`load_balanced_positions`); K and V are all-gathered into global
    order, and the masks compare global positions. `attention_mask` is then [b, 1, s_local, s]:
    rows are this rank's queries in local order, columns every key in global order.
    """

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type,
                 attention_type: str = "self", attention_dropout: float | None = None,
                 softmax_scale: float | None = None, cp_comm_type: str | None = None,
                 pg_collection=None, **kwargs) -> None:
        super().__init__(config=config)
        self.layer_number = max(1, layer_number)
        self.window_left = None
        if is_layer_window_attention(config.window_size, config.window_attn_skip_freq,
                                     self.layer_number):
            self.window_left = int(config.window_size[0])
        self.softmax_scale = softmax_scale or 1.0 / math.sqrt(config.kv_channels)
        self.dropout_p = config.attention_dropout if attention_dropout is None else attention_dropout
        self.cp_group = getattr(pg_collection, "cp", None)
        if cp_comm_type not in (None, "all_gather"):
            raise ValueError(f"local attention implements cp_comm_type='all_gather' only, "
                             f"not {cp_comm_type!r}")

    def _positions(self, sq: int, sk: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """Global positions of the query rows and key columns."""
        group = self.cp_group
        if group is not None and group.size() > 1:
            q_pos = load_balanced_positions(sk, group.size(), group.rank()).to(device)
        else:
            q_pos = torch.arange(sq, device=device) + (sk - sq)
        return q_pos, torch.arange(sk, device=device)

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if packed_seq_params is not None:
            raise NotImplementedError("packed (THD) sequences need the Transformer Engine path")
        if self.cp_group is not None and self.cp_group.size() > 1:
            key, value = gather_sequence(key, self.cp_group), gather_sequence(value, self.cp_group)
        # [s, b, heads, d] -> [b, heads, s, d]
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        if q.shape[1] != k.shape[1]:
            rep = q.shape[1] // k.shape[1]
            k, v = k.repeat_interleave(rep, dim=1), v.repeat_interleave(rep, dim=1)
        i, j = self._positions(q.shape[2], k.shape[2], q.device)
        i, j = i.unsqueeze(1), j.unsqueeze(0)
        allowed = j <= i
        if self.window_left is not None:
            allowed = allowed & (j >= i - self.window_left)
        if attention_mask is not None:
            allowed = allowed & ~attention_mask.bool()
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.softmax_scale
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        if self.training and self.dropout_p > 0:
            probs = torch.nn.functional.dropout(probs, p=self.dropout_p)
        context = torch.matmul(probs, v)  # [b, heads, sq, d]
        b, h, s, d = context.shape
        return context.permute(2, 0, 1, 3).reshape(s, b, h * d)
