"""Muon under tensor parallelism: TP=2 (expert TP=2) gives the TP=1 update, bit for bit up to
fp32 tolerance, for every parameter of the tiny K-EXAONE model, with and without block splits;
the global grad norm counts every parameter once (TP=2 == TP=1 == norm of the full grads).

The TP=1 weights are sharded by this test's own reading of megatron-core's layout (gated
linear_fc1: each rank holds [gate_r; up_r]); a forward pass checks that reading (TP=2 loss ==
TP=1 loss) before the optimizer is compared.
"""

from __future__ import annotations

import zlib

import torch
import torch.distributed as dist
from megatron.core import parallel_state as ps

from exaone_train.parallel.testing import run_distributed

VARIANTS = {
    "whole_fp32": dict(ns_dtype="fp32"),
    "split_fp32": dict(ns_dtype="fp32", qkv_split="per_group", fc1_split="gate_up"),
    "qkv_bf16": dict(ns_dtype="bf16", qkv_split="qkv"),
}
STEPS = 3


def _full_tensor(name: str, shape: tuple[int, ...], salt: int) -> torch.Tensor:
    """Weights (salt 0: norms near 1, matrices large enough for a loss that sees the layout)
    or grads (salt = step)."""
    gen = torch.Generator().manual_seed(zlib.crc32(name.encode()) + salt)
    x = torch.randn(shape, generator=gen)
    if salt:
        return x
    return 1.0 + 0.1 * x if len(shape) == 1 else 0.2 * x


def _gated_fc1(name: str) -> bool:
    return "linear_fc1.weight" in name


def _tp_group(name: str):
    return ps.get_expert_tensor_parallel_group() if ".experts." in name \
        else ps.get_tensor_model_parallel_group()


def _shard(name: str, p: torch.Tensor, full: torch.Tensor, naive: bool = False) -> torch.Tensor:
    """This rank's part of `full` in megatron-core's TP layout for parameter `p` (`naive`:
    plain chunks everywhere, the wrong layout for gated fc1, as a control)."""
    if not getattr(p, "tensor_model_parallel", False):
        return full
    group = _tp_group(name)
    n, r = dist.get_world_size(group), dist.get_rank(group)
    if p.partition_dim == 0 and _gated_fc1(name) and not naive:
        gate, up = full.chunk(2, dim=0)
        return torch.cat([gate.chunk(n)[r], up.chunk(n)[r]])
    return full.chunk(n, dim=p.partition_dim)[r]


def _unshard(name: str, p: torch.Tensor) -> torch.Tensor:
    """The full TP=1 tensor of a (maybe) sharded parameter."""
    if not getattr(p, "tensor_model_parallel", False):
        return p.detach().clone()
    group = _tp_group(name)
    parts = [torch.empty_like(p) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, p.detach().contiguous(), group=group)
    if p.partition_dim == 0 and _gated_fc1(name):
        halves = [q.chunk(2) for q in parts]
        return torch.cat([h[0] for h in halves] + [h[1] for h in halves])
    return torch.cat(parts, dim=p.partition_dim)


def _build(tp: int):
    from exaone_train.config.load import load_recipe
    from exaone_train.model.builder import build_model
    from exaone_train.parallel.state import init_model_parallel

    cfg = load_recipe("tiny_cpu", [f"parallel.tp={tp}", f"parallel.expert_tp={tp}",
                                    f"parallel.sequence_parallel={str(tp > 1).lower()}"])
    init_model_parallel(cfg.parallel, cfg.seed)
    return build_model(cfg.model, cfg.parallel, cfg.precision)


def _full_shapes() -> dict[str, tuple[int, ...]]:
    return {n: tuple(p.shape) for n, p in _build(1).named_parameters()}


def _loss(model) -> float:
    ids = torch.arange(64).reshape(2, 32) * 37 % 4000
    pos = torch.arange(32).expand(2, 32)
    model.eval()  # megatron refuses MoE + TP without SP in training mode; eval is the same math
    with torch.no_grad():
        return model(ids, pos, None, labels=torch.roll(ids, -1, 1)).mean().item()


def _loaded(tp: int, shapes: dict, naive: bool = False):
    model = _build(tp)
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(_shard(n, p, _full_tensor(n, shapes[n], 0), naive))
    return model


def _train(tp: int, shapes: dict, variant: dict) -> tuple[dict[str, torch.Tensor], float, float]:
    """Load the shared full weights into a TP=`tp` model, take STEPS Muon steps on shared full
    grads, return the full weights after, the loss before and the first grad norm."""
    from exaone_train.optim import OptimConfig, build_optimizer, grad_norm

    model = _loaded(tp, shapes)
    named = dict(model.named_parameters())
    loss = _loss(model)
    opt = build_optimizer(model, OptimConfig(lr_peak=0.01, **variant))
    norm = 0.0
    for step in range(STEPS):
        for n, p in named.items():
            p.grad = _shard(n, p, _full_tensor(n, shapes[n], step + 1))
        norm = grad_norm(opt) if step == 0 else norm
        opt.step()
    return {n: _unshard(n, p) for n, p in named.items()}, loss, norm


def _compare_tp2_tp1() -> dict[str, tuple[float, float]]:
    torch.use_deterministic_algorithms(True)
    shapes = _full_shapes()
    out = {"naive_layout_control": (abs(_loss(_loaded(2, shapes, naive=True))
                                        - _loss(_loaded(1, shapes))), 0.0)}
    for key, variant in VARIANTS.items():
        ref, ref_loss, ref_norm = _train(1, shapes, variant)
        got, loss, norm = _train(2, shapes, variant)
        full_norm = sum(_full_tensor(n, s, 1).double().pow(2).sum() for n, s in shapes.items())
        assert abs(ref_norm - full_norm.sqrt().item()) < 1e-6 * ref_norm, (ref_norm, full_norm)
        assert abs(norm - ref_norm) < 1e-6 * ref_norm, (key, norm, ref_norm)  # counted once
        assert all(torch.isfinite(t).all() for t in [*ref.values(), *got.values()]), key
        moved = min((ref[n] - _full_tensor(n, shapes[n], 0)).abs().max().item() for n in ref)
        assert moved > 0, "some parameter did not move"
        diff = max((ref[n] - got[n]).abs().max().item() for n in ref)
        out[key] = (abs(loss - ref_loss), diff)
    return out


def test_muon_tp2_equals_tp1() -> None:
    for rank_result in run_distributed(_compare_tp2_tp1, 2):
        control, _ = rank_result.pop("naive_layout_control")
        assert control > 1e-3, control  # the loss check below can see a wrong layout
        for key, (loss_diff, weight_diff) in rank_result.items():
            assert loss_diff < 1e-5, (key, loss_diff)  # our sharding is megatron's layout
            assert weight_diff <= 1e-6, (key, weight_diff)
