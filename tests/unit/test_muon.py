"""Muon: parity with torch.optim.Muon, Newton-Schulz orthogonality, block splits, AdamW parity,
and the parameter classification of the tiny K-EXAONE model."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from exaone_train.errors import ConfigError
from exaone_train.optim import (
    OptimConfig,
    build_optimizer,
    classify_params,
    clip_grad_norm_,
    format_classification,
    newton_schulz,
)
from exaone_train.optim.config import ScheduleConfig
from exaone_train.optim.schedule import WSDSchedule


def _grads(shape: tuple[int, ...], steps: int, seed: int) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) for _ in range(steps)]


def _run(opt: torch.optim.Optimizer, params: list[nn.Parameter],
         grads: list[list[torch.Tensor]]) -> None:
    for step_grads in grads:
        for p, g in zip(params, step_grads, strict=True):
            p.grad = g.clone()
        opt.step()


class _Matrices(nn.Module):
    """Two hidden matrices named as megatron names them: one wide, one tall."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.linear_proj = nn.Linear(80, 48, bias=False)
        self.linear_fc2 = nn.Linear(32, 96, bias=False)


@pytest.mark.parametrize("rms_scaling,torch_adjust", [("original", None),
                                                      ("match_rms_adamw", "match_rms_adamw")])
@pytest.mark.parametrize("nesterov", [True, False])
def test_matches_torch_muon(rms_scaling: str, torch_adjust: str | None, nesterov: bool) -> None:
    ours, ref = _Matrices(), _Matrices()
    cfg = OptimConfig(lr_peak=0.02, weight_decay=0.1, muon_momentum=0.9, muon_nesterov=nesterov,
                      rms_scaling=rms_scaling)
    opt = build_optimizer(ours, cfg)
    assert [g["algorithm"] for g in opt.param_groups] == ["muon"]
    ref_opt = torch.optim.Muon(ref.parameters(), lr=0.02, weight_decay=0.1, momentum=0.9,
                               nesterov=nesterov, adjust_lr_fn=torch_adjust)
    grads = list(zip(_grads((48, 80), 6, 1), _grads((96, 32), 6, 2), strict=True))
    _run(opt, list(ours.parameters()), grads)
    _run(ref_opt, list(ref.parameters()), grads)
    for a, b, init in zip(ours.parameters(), ref.parameters(), _Matrices().parameters(), strict=True):
        assert torch.equal(a, b), (a - b).abs().max().item()
        assert (a - init).abs().max() > 1e-3  # it did move


def test_matches_torch_adamw_on_adamw_classes() -> None:
    def model() -> nn.Module:
        torch.manual_seed(3)
        m = nn.Module()
        m.word_embeddings = nn.Embedding(50, 16)
        m.final_layernorm = nn.LayerNorm(16, bias=False)
        return m
    ours, ref = model(), model()
    opt = build_optimizer(ours, OptimConfig(lr_peak=1e-2, weight_decay=0.1, adamw_beta2=0.95,
                                            no_weight_decay_classes=[]))
    assert {g["param_class"] for g in opt.param_groups} == {"embedding", "norm"}
    ref_opt = torch.optim.AdamW(ref.parameters(), lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1)
    grads = list(zip(_grads((50, 16), 4, 5), _grads((16,), 4, 6), strict=True))
    _run(opt, list(ours.parameters()), grads)
    _run(ref_opt, list(ref.parameters()), grads)
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("shape", [(64, 160), (160, 64)])
def test_newton_schulz_is_near_orthogonal(shape: tuple[int, int]) -> None:
    gen = torch.Generator().manual_seed(7)
    x = torch.randn(shape, generator=gen)
    s = torch.linalg.svdvals(newton_schulz(x, (3.4445, -4.7750, 2.0315), 5, dtype="fp32"))
    assert s.min() > 0.6 and s.max() < 1.25, (s.min(), s.max())  # the quintic's band
    s_bf16 = torch.linalg.svdvals(newton_schulz(x, (3.4445, -4.7750, 2.0315), 5).float())
    assert s_bf16.min() > 0.55 and s_bf16.max() < 1.3


def test_newton_schulz_converges_to_polar_factor() -> None:
    """The convergent cubic (1.5, -0.5, 0) must reach U V^T of the SVD."""
    gen = torch.Generator().manual_seed(8)
    u, _ = torch.linalg.qr(torch.randn(40, 24, generator=gen))
    v, _ = torch.linalg.qr(torch.randn(24, 24, generator=gen))
    x = u @ torch.diag(torch.linspace(0.5, 2.0, 24)) @ v.T
    polar = newton_schulz(x, (1.5, -0.5, 0.0), 60, dtype="fp32")
    assert (polar - u @ v.T).abs().max() < 1e-5


def _qkv_model() -> nn.Module:
    """One attention block's linear_qkv as megatron lays it out: 2 groups x [q0 q1 k v]."""
    m = nn.Module()
    m.config = type("C", (), dict(num_attention_heads=4, num_query_groups=2, kv_channels=8,
                                  gated_linear_unit=True))()
    m.linear_qkv = nn.Linear(32, 2 * (2 * 8 + 8 + 8), bias=False)
    m.linear_fc1 = nn.Linear(32, 2 * 24, bias=False)
    return m


def _update_rows(split: dict, name: str, grad_edit) -> torch.Tensor:
    """Update of `name` from one step with a grad edited by `grad_edit` (rows of the delta)."""
    torch.manual_seed(0)
    m = _qkv_model()
    before = {n: p.detach().clone() for n, p in m.named_parameters()}
    opt = build_optimizer(m, OptimConfig(weight_decay=0.0, ns_dtype="fp32", **split))
    for n, p in m.named_parameters():
        p.grad = _grads(tuple(p.shape), 1, 11)[0]
        if n == name:
            grad_edit(p.grad)
    opt.step()
    return dict(m.named_parameters())[name].detach() - before[name]


@pytest.mark.parametrize("name,split,touched,untouched", [
    # per_group: group 1's k rows are 40:48; group 0's q, k, v (0:32) must not move
    ("linear_qkv.weight", {"qkv_split": "per_group"}, slice(40, 48), slice(0, 32)),
    # qkv: all K rows are one block (16:24, 48:56); Q and V rows must not move
    ("linear_qkv.weight", {"qkv_split": "qkv"}, slice(16, 24), slice(0, 16)),
    # gate_up: the up half (24:48) must not move when only the gate grad changes
    ("linear_fc1.weight", {"fc1_split": "gate_up"}, slice(0, 24), slice(24, 48)),
])
def test_split_blocks_are_orthogonalised_independently(name, split, touched, untouched) -> None:
    def edit(g: torch.Tensor) -> None:
        g[touched] += 1.0
    base, edited = _update_rows(split, name, lambda g: None), _update_rows(split, name, edit)
    assert torch.equal(base[untouched], edited[untouched])
    assert not torch.allclose(base[touched], edited[touched])
    unsplit = _update_rows({}, name, edit)
    assert not torch.allclose(unsplit[untouched], base[untouched])  # whole-matrix NS couples


def test_qkv_split_block_scale_uses_block_shape() -> None:
    """match_rms_adamw per block: update = -lr * 0.2 * sqrt(max(block shape)) * NS(block)
    (first step: the Nesterov update is a multiple of the grad, which NS normalises away)."""
    upd = _update_rows({"qkv_split": "per_group"}, "linear_qkv.weight", lambda g: None)
    grad = _grads((48, 32), 1, 11)[0]
    lr, coeffs = OptimConfig().lr_peak, (3.4445, -4.7750, 2.0315)
    for rows in (slice(0, 16), slice(16, 24), slice(24, 32), slice(32, 48)):
        ns = newton_schulz(grad[rows], coeffs, 5, dtype="fp32")
        expected = -lr * 0.2 * max(ns.shape) ** 0.5 * ns  # 0.2*sqrt(32), not sqrt(48) of the whole
        torch.testing.assert_close(upd[rows], expected, rtol=1e-4, atol=1e-7)


@pytest.fixture(scope="module")
def tiny_model():
    from exaone_train.config.load import load_recipe
    from exaone_train.model.builder import build_model
    from exaone_train.parallel import state

    cfg = load_recipe("tiny_cpu")
    state.setup(cfg.parallel, cfg.seed)
    yield build_model(cfg.model, cfg.parallel, cfg.precision)
    state.teardown()


EXPECTED_ADAMW = {"embedding", "output", "norm", "router"}


def test_tiny_kexaone_classification(tiny_model) -> None:
    infos = {i.name: i for i in classify_params(tiny_model)}
    assert {i.param_class for i in infos.values() if i.algorithm == "adamw"} == EXPECTED_ADAMW
    assert {i.param_class for i in infos.values() if i.algorithm == "muon"} == \
        {"qkv", "fc1", "matrix"}
    get = lambda n: infos[n]  # noqa: E731
    assert get("embedding.word_embeddings.weight").algorithm == "adamw"
    assert get("output_layer.weight").algorithm == "adamw"
    assert get("decoder.layers.1.mlp.router.weight").algorithm == "adamw"
    assert get("decoder.layers.2.self_attention.q_layernorm.weight").param_class == "norm"
    assert get("decoder.layers.1.self_attention.linear_qkv.weight").layout == "qkv"
    expert = get("decoder.layers.1.mlp.experts.local_experts.3.linear_fc1.weight")
    assert (expert.algorithm, expert.layout, expert.tp_group) == ("muon", "fc1", "expert_tp")
    shared = get("decoder.layers.1.mlp.shared_experts.linear_fc2.weight")
    assert (shared.algorithm, shared.tp_group, shared.partition_dim) == ("muon", "tp", 1)
    assert get("mtp.layers.0.eh_proj.weight").algorithm == "muon"
    assert get("mtp.layers.0.transformer_layer.mlp.linear_fc1.weight").layout == "fc1"
    muon_2d = [i for i in infos.values() if i.algorithm == "muon"]
    # 4 layers x (qkv, proj); dense fc1, fc2; 3 MoE layers x (8 experts + shared) x 2; MTP 5
    assert all(len(i.shape) == 2 for i in muon_2d) and len(muon_2d) == 4 * 2 + 2 + 3 * (8 * 2 + 2) + 5
    table = format_classification(list(infos.values()))
    assert "decoder.layers.3.mlp.router.weight" in table and "muon:" in table


def test_tiny_kexaone_trains_with_muon_and_wsd(tiny_model) -> None:
    """Five steps on one batch: loss falls; every parameter moved; the schedule set the LRs."""
    torch.manual_seed(0)
    model = tiny_model
    cfg = OptimConfig(lr_peak=3e-3, class_lr_multipliers={"embedding": 0.5},
                      schedule=ScheduleConfig(total_tokens=10 * 64, warmup_tokens=64,
                                              decay_fraction=0.5))
    opt = build_optimizer(model, cfg)
    sched = WSDSchedule(opt, cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    ids = torch.randint(0, 4000, (2, 32))
    pos = torch.arange(32).expand(2, 32)
    losses = []
    for step in range(5):
        sched.step(tokens_consumed=(step + 1) * ids.numel())
        loss = model(ids, pos, None, labels=torch.roll(ids, -1, 1)).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.05, losses
    emb = next(g for g in opt.param_groups if g["param_class"] == "embedding")
    assert emb["lr"] == pytest.approx(0.5 * 3e-3)
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert len(moved) == len(before)


def test_state_dict_resume_is_exact() -> None:
    """Two steps == one step, save, load into a fresh optimizer, one step (Muon + AdamW)."""
    def model() -> nn.Module:
        m = _Matrices()
        m.final_layernorm = nn.LayerNorm(32, bias=False)
        return m
    grads = [list(g) for g in zip(_grads((48, 80), 2, 1), _grads((96, 32), 2, 2),
                                  _grads((32,), 2, 3), strict=True)]
    straight, resumed = model(), model()
    _run(build_optimizer(straight, OptimConfig()), list(straight.parameters()), grads)
    first = build_optimizer(resumed, OptimConfig())
    _run(first, list(resumed.parameters()), grads[:1])
    second = build_optimizer(resumed, OptimConfig())
    second.load_state_dict(first.state_dict())
    _run(second, list(resumed.parameters()), grads[1:])
    for a, b in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(a, b)


def test_clip_grad_norm_matches_torch() -> None:
    ours, ref = _Matrices(), _Matrices()
    opt = build_optimizer(ours, OptimConfig())
    for model in (ours, ref):
        new = (_grads((48, 80), 1, 1)[0], _grads((96, 32), 1, 2)[0])
        for p, g in zip(model.parameters(), new, strict=True):
            p.grad = g
    norm = clip_grad_norm_(opt, max_norm=1.0)
    ref_norm = torch.nn.utils.clip_grad_norm_(list(ref.parameters()), max_norm=1.0)
    assert norm == pytest.approx(ref_norm.item(), rel=1e-6) and norm > 10
    for a, b in zip(ours.parameters(), ref.parameters(), strict=True):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-6, atol=0)


def test_bad_optim_config_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="optim.rms_scaling"):
        build_optimizer(_Matrices(), OptimConfig(rms_scaling="spectral"))
    with pytest.raises(ConfigError, match="class_lr_multipliers"):
        build_optimizer(_Matrices(), OptimConfig(class_lr_multipliers={"embeddings": 0.5}))
