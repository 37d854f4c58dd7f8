"""Modules our layer specs use where megatron-core's local ones do not fit.

- `RMSNorm`: megatron-core's torch norm refuses sequence parallelism; EXAONE 4.0's post-norms
  need a norm anyway. fp32 math, HF-style `weight * x_normed.to(dtype)`.
- `PostNormRowParallelLinear`: EXAONE 4.0's QK-Reorder-LN normalises the attention / MLP output
  before the residual add. Applying the norm to the row-parallel output (already reduced over
  TP) gives exactly that, and keeps megatron-core's TransformerLayer untouched.
- `LocalCoreAttention`: causal attention with HF sliding-window semantics and an optional
  document mask, for the CPU / local path. megatron-core's local DotProductAttention replaces
  any given mask with the window mask, so a packed sample's document mask would be lost (and
  it refuses context parallelism). It runs blockwise (`model.blockwise`, memory O(s) for a
  sliding-window layer); under CP sliding-window layers exchange a halo
  (`exaone_train.parallel.halo`), global layers all-gather K/V
  (`exaone_train.parallel.context`), and masks compare global positions.
"""

from __future__ import annotations

import functools
import math
import warnings

import torch
from megatron.core.tensor_parallel.layers import RowParallelLinear
from megatron.core.transformer.module import MegatronModule
from megatron.core.transformer.transformer_config import TransformerConfig
from megatron.core.transformer.utils import is_layer_window_attention

from exaone_train.model.blockwise import Visibility, blockwise_attention
from exaone_train.parallel import state
from exaone_train.parallel.context import gather_sequence, load_balanced_positions
from exaone_train.parallel.halo import exchange_halo, halo_fits


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

    Visible keys = causal AND (sliding window on window layers) AND (same document). Window
    semantics follow `config.window_size=(W-1, 0)`: key j is visible from query i iff
    i - (W-1) <= j <= i, i.e. HF's i - W < j <= i.

    `attention_mask` is either document ids ([b, s] integers, every position in global order,
    what the trainer passes) or a megatron-style bool mask (True = masked; [b, 1, s_q, s_k],
    under CP [b, 1, s_local, s] with keys in global order). The attention itself is
    blockwise (`model.blockwise`): no [s_q, s_k] scores or mask are built, and the backward
    recomputes per tile. Attention dropout > 0 (or `blockwise = False`) takes the dense path.

    Context parallelism (the CP group of `pg_collection` has size > 1): q/k/v hold this rank's
    load-balanced chunks (`load_balanced_positions`). Sliding-window layers exchange only the
    W-1 keys before each chunk (`parallel.halo`); global layers, and windows longer than a
    chunk, all-gather K and V into global order (warned once: the halo would span several
    ranks' chunks). Masks compare global positions.
    """

    blockwise = True  # False: the dense reference path (bench/attention_memory.py compares)
    halo_exchange = True  # False: sliding layers all-gather K/V too (bench/cp_traffic.py)

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

    def _cp_keys(self, key, value) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """K/V this rank attends to under CP and their global positions: halo or all-gather."""
        group, local_len = self.cp_group, key.shape[0]
        halo = self.window_left
        if halo is not None and self.halo_exchange and halo_fits(local_len, halo):
            kv, k_pos = exchange_halo(torch.cat([key, value], dim=-1), halo, group)
            k, v = kv.split([key.shape[-1], value.shape[-1]], dim=-1)
            return k, v, k_pos
        if halo is not None and halo > 0 and self.halo_exchange:
            _warn_halo_fallback(halo, local_len // 2)
        k, v = gather_sequence(key, group), gather_sequence(value, group)
        return k, v, torch.arange(k.shape[0], device=key.device)

    def _keys_and_visibility(self, query, key, value, attention_mask):
        group = self.cp_group
        if group is not None and group.size() > 1:
            key, value, k_pos = self._cp_keys(key, value)
            seq_len = query.shape[0] * group.size()
            q_pos = load_balanced_positions(seq_len, group.size(), group.rank()).to(query.device)
        else:
            k_pos = torch.arange(key.shape[0], device=query.device)
            q_pos = k_pos[key.shape[0] - query.shape[0]:]
        vis = Visibility(q_pos, k_pos, self.window_left)
        if attention_mask is not None and attention_mask.dtype == torch.bool:
            # legacy mask: keys in global order; pick the columns of the keys held here
            vis.masked = attention_mask if attention_mask.shape[-1] == k_pos.numel() else \
                attention_mask.index_select(-1, k_pos)
        elif attention_mask is not None:  # document ids of every position, global order
            vis.q_doc, vis.k_doc = attention_mask[:, q_pos], attention_mask[:, k_pos]
        return key, value, vis

    def forward(self, query, key, value, attention_mask, attn_mask_type=None,
                attention_bias=None, packed_seq_params=None):
        if packed_seq_params is not None:
            raise NotImplementedError("packed (THD) sequences need the Transformer Engine path")
        key, value, vis = self._keys_and_visibility(query, key, value, attention_mask)
        # [s, b, heads, d] -> [b, kv_heads, rep, s, d] (query heads of a KV group are adjacent)
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))
        b, heads, s, d = q.shape
        q = q.reshape(b, k.shape[1], heads // k.shape[1], s, d)
        if self.blockwise and not (self.training and self.dropout_p > 0):
            context = blockwise_attention(q, k, v, vis, self.softmax_scale)
        else:
            context = self._dense(q, k, v, vis)
        return context.reshape(b, heads, s, d).permute(2, 0, 1, 3).reshape(s, b, heads * d)

    def _dense(self, q, k, v, vis: Visibility) -> torch.Tensor:
        """The full [s_q, s_k] softmax (reference path; the one with attention dropout)."""
        allowed = vis.allowed(slice(None), slice(None))
        if allowed is None:
            allowed = torch.zeros(1, 1, 1, q.shape[-2], k.shape[-2], dtype=torch.bool)
        k, v = k.unsqueeze(2), v.unsqueeze(2)
        scores = torch.matmul(q.float(), k.float().transpose(-1, -2)) * self.softmax_scale
        scores = scores.masked_fill(~allowed, float("-inf"))
        probs = torch.softmax(scores, dim=-1).to(v.dtype)
        if self.training and self.dropout_p > 0:
            probs = torch.nn.functional.dropout(probs, p=self.dropout_p)
        return torch.matmul(probs, v)  # [b, kv_heads, rep, sq, d]


@functools.cache
def _warn_halo_fallback(halo: int, chunk: int) -> None:
    warnings.warn(f"sliding window needs {halo} keys before each CP chunk but a chunk holds "
                  f"{chunk} tokens: this layer all-gathers K/V instead of a halo exchange "
                  f"(use a smaller parallel.cp or a longer sequence)", stacklevel=3)
