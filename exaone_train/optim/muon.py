"""Muon (Newton-Schulz orthogonalised Nesterov momentum) with AdamW for the other parameters,
as one `torch.optim.Optimizer`, correct under tensor and expert-tensor parallelism.

The Muon math follows `torch.optim.Muon` (torch 2.13) operation for operation, so with the same
settings a single unsharded matrix gets the same update:
    buf <- lerp(buf, g, 1 - momentum);  u <- lerp(g, buf, momentum) if nesterov else buf
    O   <- NS_k(u) (bf16 by default; transposed so the Gram matrix is the small one)
    p   <- p * (1 - lr * weight_decay) - lr * scale(shape) * O
with scale "original" = sqrt(max(1, rows/cols)) (Keller Jordan), "match_rms_adamw" =
0.2 * sqrt(max(rows, cols)) (Moonlight: one LR for Muon and AdamW), "none" = 1.

Tensor parallelism: a TP-sharded matrix (megatron's `param.tensor_model_parallel`,
`param.partition_dim`) is all-gathered over its TP group (the expert-TP group for routed
experts), orthogonalised as the full matrix in its TP=1 row order, and each rank keeps its
shard, so TP=N gives the TP=1 update. Layouts that are not a plain concatenation of shards:
`linear_fc1` of a gated MLP (each rank holds [gate_r; up_r]) is reordered to [gate; up].
`linear_qkv` shards are whole query groups, so the concatenation already is the TP=1 layout.
Blocks (qkv_split / fc1_split) are orthogonalised and RMS-scaled each by its own shape.

Grads: `p.grad`, else megatron DDP's `p.main_grad`. Grads must already be reduced over data
parallel ranks (DDP). State is per whole parameter, for the parameters in its groups: every
parameter on every DP rank, or with the distributed optimizer (`optim.layer_wise`) only the
ones this rank owns (see docs/optim.md).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor
from torch.optim import Optimizer
from torch.optim.adamw import adamw as adamw_functional

_NS_DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32}


def newton_schulz(x: Tensor, coefficients: Sequence[float], steps: int, eps: float = 1e-7,
                  dtype: str = "bf16") -> Tensor:
    """Approximate U V^T of x = U S V^T by `steps` quintic Newton-Schulz iterations
    (singular values land in roughly [0.7, 1.2] with the default coefficients)."""
    if x.ndim != 2:
        raise ValueError(f"Newton-Schulz needs a matrix, got shape {tuple(x.shape)}")
    a, b, c = coefficients
    y = x.to(_NS_DTYPES[dtype])
    tall = x.size(0) > x.size(1)
    if tall:
        y = y.T
    y.div_(y.norm().clamp(min=eps))  # spectral norm <= Frobenius norm <= 1
    for _ in range(steps):
        gram = y @ y.T
        poly = torch.addmm(gram, gram, gram, beta=b, alpha=c)
        y = torch.addmm(y, poly, y, beta=a)
    return y.T if tall else y


def rms_scale(mode: str, rows: int, cols: int) -> float:
    """Update multiplier for an orthogonalised (rows x cols) block (torch.optim.Muon's
    `adjust_lr_fn`: None/"original", "match_rms_adamw"; plus "none")."""
    if mode == "original":
        return math.sqrt(max(1.0, rows / cols))
    if mode == "match_rms_adamw":
        return 0.2 * math.sqrt(max(rows, cols))
    if mode == "none":
        return 1.0
    raise ValueError(f"unknown rms_scaling {mode!r}")


def fc1_rank_order(rows_full: int, tp: int) -> tuple[Tensor, Tensor]:
    """Row indices of the gate and up halves (TP=1 order) inside the concatenation of `tp`
    gated-fc1 shards, each shard being [gate_r; up_r]."""
    local = rows_full // tp
    half = local // 2
    starts = torch.arange(tp) * local
    gate = (starts[:, None] + torch.arange(half)[None, :]).reshape(-1)
    return gate, gate + half


def qkv_blocks(rows_full: int, qkv_rows: Sequence[int], split: str) -> list[Tensor]:
    """Row index blocks of a linear_qkv weight ([q heads..., k, v] per query group)."""
    per_group = sum(qkv_rows)
    groups = rows_full // per_group
    rows = torch.arange(rows_full).view(groups, per_group)
    parts = torch.split(rows, list(qkv_rows), dim=1)  # q, k, v: [groups, n] each
    if split == "qkv":
        return [p.reshape(-1) for p in parts]
    if split == "per_group":
        return [p[g] for g in range(groups) for p in parts]
    raise ValueError(f"unknown qkv_split {split!r}")


def row_blocks(group: dict[str, Any], rows_full: int, tp: int) -> list[Tensor] | None:
    """Row index blocks (in TP=1 order, indexing the rank-concatenated matrix) to orthogonalise
    separately; None = the whole matrix as it stands."""
    layout = group.get("layout", "plain")
    if layout == "fc1":
        gate, up = fc1_rank_order(rows_full, tp)
        if group["fc1_split"] == "gate_up":
            return [gate, up]
        return [torch.cat([gate, up])] if tp > 1 else None
    if layout == "qkv" and group["qkv_split"] != "none":
        return qkv_blocks(rows_full, group["qkv_rows"], group["qkv_split"])
    return None


class TPContext:
    """How to reach the full matrix of a (maybe) TP-sharded parameter."""

    def __init__(self, group: Any | None, dim: int) -> None:
        self.group, self.dim = group, dim
        self.size = dist.get_world_size(group) if group is not None else 1

    def gather(self, local: Tensor) -> Tensor:
        if self.size == 1:
            return local
        parts = [torch.empty_like(local) for _ in range(self.size)]
        dist.all_gather(parts, local.contiguous(), group=self.group)
        return torch.cat(parts, dim=self.dim)

    def shard(self, full: Tensor) -> Tensor:
        if self.size == 1:
            return full
        return full.chunk(self.size, dim=self.dim)[dist.get_rank(self.group)]


def orthogonalized_update(full: Tensor, blocks: list[Tensor] | None,
                          group: dict[str, Any]) -> tuple[Tensor, float]:
    """NS of `full` (or of each row block), RMS-scaled per block; returns the update and the
    scale still to apply (a scalar is left to the caller, as torch.optim.Muon does)."""
    ns = dict(coefficients=group["ns_coefficients"], steps=group["ns_steps"],
              eps=group["eps"], dtype=group["ns_dtype"])
    mode = group["rms_scaling"]
    if blocks is None:
        return newton_schulz(full, **ns), rms_scale(mode, *full.shape)
    out = torch.empty_like(full, dtype=torch.float32)
    if len(blocks) == 1:  # a reordering only: keep the scale scalar (as torch does)
        o = newton_schulz(full[blocks[0]], **ns)
        out[blocks[0]] = o.float()
        return out, rms_scale(mode, *o.shape)
    for idx in blocks:
        o = newton_schulz(full[idx], **ns)
        out[idx] = o.float() * rms_scale(mode, *o.shape)
    return out, 1.0


def grad_of(p: Tensor) -> Tensor | None:
    """The gradient to use: `.grad`, else megatron DDP's `.main_grad`."""
    return p.grad if p.grad is not None else getattr(p, "main_grad", None)


class MuonAdamW(Optimizer):
    """Param groups carry `algorithm` ("muon" | "adamw"); see `optim.groups.param_groups`.

    Muon group keys: lr, weight_decay, momentum, nesterov, ns_coefficients, ns_steps, eps,
    ns_dtype, rms_scaling, layout (plain | qkv | fc1), qkv_split, qkv_rows, fc1_split,
    tp_group ("tp" | "expert_tp" | None). AdamW group keys: lr, betas, eps, weight_decay.
    `tp_group_fn(kind)` returns the process group for a kind (default: megatron's).
    """

    def __init__(self, param_groups: list[dict[str, Any]],
                 tp_group_fn: Callable[[str], Any] | None = None) -> None:
        for g in param_groups:
            if g.get("algorithm") not in ("muon", "adamw"):
                raise ValueError(f"param group needs algorithm muon|adamw: {g.get('name')}")
            if g["algorithm"] == "muon" and any(p.ndim != 2 for p in g["params"]):
                raise ValueError(f"Muon group {g.get('name')} holds a parameter that is not 2-D")
        super().__init__(param_groups, defaults={})
        self.tp_group_fn = tp_group_fn or megatron_tp_group

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            (self._muon_group if group["algorithm"] == "muon" else self._adamw_group)(group)
        return loss

    def _tp_context(self, p: Tensor, group: dict[str, Any]) -> TPContext:
        if not getattr(p, "tensor_model_parallel", False) or group.get("tp_group") is None:
            return TPContext(None, 0)
        return TPContext(self.tp_group_fn(group["tp_group"]), int(p.partition_dim))  # type: ignore[attr-defined]

    def _muon_group(self, group: dict[str, Any]) -> None:
        lr, wd, m = group["lr"], group["weight_decay"], group["momentum"]
        for p in group["params"]:
            g = grad_of(p)
            if g is None:
                continue
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = torch.zeros_like(g)
            buf = state["momentum_buffer"]
            buf.lerp_(g, 1 - m)
            u = g.lerp(buf, m) if group["nesterov"] else buf
            tp = self._tp_context(p, group)
            full = tp.gather(u)
            # fc1 / qkv shard along rows (column-parallel); row-parallel weights have no blocks
            blocks = row_blocks(group, full.size(0), tp.size) if tp.dim == 0 else None
            update, scale = orthogonalized_update(full, blocks, group)
            p.mul_(1 - lr * wd)
            p.add_(tp.shard(update), alpha=-lr * scale)

    def _adamw_group(self, group: dict[str, Any]) -> None:
        params, grads, avgs, sqs, steps = [], [], [], [], []
        for p in group["params"]:
            g = grad_of(p)
            if g is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = torch.tensor(0.0)
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
            params.append(p)
            grads.append(g)
            steps.append(state["step"])
            avgs.append(state["exp_avg"])
            sqs.append(state["exp_avg_sq"])
        if not params:
            return
        beta1, beta2 = group["betas"]
        adamw_functional(params, grads, avgs, sqs, [], steps, amsgrad=False, beta1=beta1,
                         beta2=beta2, lr=group["lr"], weight_decay=group["weight_decay"],
                         eps=group["eps"], maximize=False)


def megatron_tp_group(kind: str) -> Any:
    """The TP process group for a group kind, from megatron-core's parallel_state."""
    from megatron.core import parallel_state as ps

    if not ps.model_parallel_is_initialized():
        return None
    if kind == "expert_tp":
        return ps.get_expert_tensor_parallel_group()
    return ps.get_tensor_model_parallel_group()
