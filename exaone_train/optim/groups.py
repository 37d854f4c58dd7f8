"""Which parameter gets which optimizer: classify every parameter by name and shape, group
them, and build the optimizer.

Muon: 2-D hidden weight matrices (attention linear_qkv / linear_proj, dense and expert MLP
linear_fc1 / linear_fc2, shared experts, the MTP block's layers and its `eh_proj`).
AdamW: embeddings, the LM head (`output_layer`), norms, biases, the MoE router, and any
parameter not recognised (listed as class "other" by `format_classification`).
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from exaone_train.errors import ConfigError
from exaone_train.optim.config import OptimConfig, validate_optim
from exaone_train.optim.muon import MuonAdamW

MUON_CLASSES = ("qkv", "fc1", "matrix")
_FC1 = re.compile(r"linear_fc1\.weight\d*$")  # \d*: TE grouped experts name weight0..N
_MATRIX = re.compile(r"(linear_proj|linear_fc2|eh_proj)\.weight\d*$")


@dataclass(frozen=True)
class ParamInfo:
    """One parameter's classification."""

    name: str
    shape: tuple[int, ...]
    param_class: str  # one of config.PARAM_CLASSES
    algorithm: str  # muon | adamw
    layout: str  # plain | qkv | fc1 (gated [gate; up])
    tp_group: str | None  # tp | expert_tp | None (not TP-sharded)
    partition_dim: int | None
    expert: bool  # a routed expert's weight (EP-sharded; its own grad-norm group)


def param_class(name: str, shape: tuple[int, ...]) -> str:
    """Class of a parameter from its megatron-core name and shape."""
    if len(shape) == 1:
        if name.endswith(".bias"):
            return "bias"
        return "norm" if re.search(r"norm\.weight$", name) else "other"
    if "word_embeddings" in name or "position_embeddings" in name:
        return "embedding"
    if name.endswith("output_layer.weight"):
        return "output"
    if name.endswith("router.weight"):
        return "router"
    if len(shape) != 2:
        return "other"
    if name.endswith("linear_qkv.weight"):
        return "qkv"
    if _FC1.search(name):
        return "fc1"
    return "matrix" if _MATRIX.search(name) else "other"


def _model_geometry(chunk: nn.Module) -> dict[str, Any]:
    config = getattr(chunk, "config", None)
    if config is None:
        return {"gated": True, "qkv_rows": None}
    kv = config.kv_channels
    q_per_group = config.num_attention_heads // config.num_query_groups
    return {"gated": bool(config.gated_linear_unit), "qkv_rows": [q_per_group * kv, kv, kv]}


def _named_parameters(model_chunks: nn.Module | Iterable[nn.Module]):
    chunks = [model_chunks] if isinstance(model_chunks, nn.Module) else list(model_chunks)
    seen: set[int] = set()
    for chunk in chunks:
        geometry = _model_geometry(chunk)
        for name, p in chunk.named_parameters():
            if p.requires_grad and id(p) not in seen:
                seen.add(id(p))
                yield name, p, geometry


def _info(name: str, p: torch.Tensor, gated: bool, algorithm: str) -> ParamInfo:
    cls = param_class(name, tuple(p.shape))
    sharded = bool(getattr(p, "tensor_model_parallel", False))
    expert = ".experts." in name  # routed experts; shared_experts are dense
    tp_kind = ("expert_tp" if expert else "tp") if sharded else None
    use_muon = algorithm == "muon" and cls in MUON_CLASSES
    layout = {"qkv": "qkv", "fc1": "fc1" if gated else "plain"}.get(cls, "plain")
    return ParamInfo(name, tuple(p.shape), cls, "muon" if use_muon else "adamw", layout,
                     tp_kind, int(p.partition_dim) if sharded else None, expert)  # type: ignore[attr-defined]


def classify_params(model_chunks: nn.Module | Iterable[nn.Module],
                    algorithm: str = "muon") -> list[ParamInfo]:
    """Classification of every trainable parameter (shared ones once)."""
    return [_info(n, p, geo["gated"], algorithm) for n, p, geo in _named_parameters(model_chunks)]


def format_classification(infos: list[ParamInfo]) -> str:
    """A table: name, shape, class, algorithm, layout, TP group / partition dim; then totals."""
    width = max(len(i.name) for i in infos)
    lines = [f"{'parameter':<{width}}  {'shape':<14} {'class':<9} {'optim':<6} {'layout':<6} tp"]
    for i in infos:
        tp = f"{i.tp_group}/dim{i.partition_dim}" if i.tp_group else "-"
        lines.append(f"{i.name:<{width}}  {str(list(i.shape)):<14} {i.param_class:<9} "
                     f"{i.algorithm:<6} {i.layout:<6} {tp}")
    for algo in ("muon", "adamw"):
        n = sum(torch.Size(i.shape).numel() for i in infos if i.algorithm == algo)
        lines.append(f"{algo}: {sum(i.algorithm == algo for i in infos)} tensors, {n:,} elements")
    return "\n".join(lines)


def _group_hparams(info: ParamInfo, cfg: OptimConfig, qkv_rows: list[int] | None) -> dict:
    decay = 0.0 if info.param_class in cfg.no_weight_decay_classes else cfg.weight_decay
    mult = cfg.class_lr_multipliers.get(info.param_class, 1.0)
    base = {"algorithm": info.algorithm, "weight_decay": decay, "param_class": info.param_class,
            "expert": info.expert}
    if info.algorithm == "adamw":
        mult *= cfg.adamw_lr_multiplier
        return base | {"lr_multiplier": mult, "lr": cfg.lr_peak * mult,
                       "betas": (cfg.adamw_beta1, cfg.adamw_beta2), "eps": cfg.adamw_eps}
    if info.layout == "qkv" and cfg.qkv_split != "none" and qkv_rows is None:
        raise ConfigError("optim.qkv_split", cfg.qkv_split,
                          f"{info.name}: the model chunk has no config to read head geometry")
    mult *= cfg.muon_lr_multiplier
    return base | {
        "lr_multiplier": mult, "lr": cfg.lr_peak * mult, "momentum": cfg.muon_momentum,
        "nesterov": cfg.muon_nesterov, "ns_coefficients": tuple(cfg.ns_coefficients),
        "ns_steps": cfg.ns_steps, "eps": cfg.ns_eps, "ns_dtype": cfg.ns_dtype,
        "rms_scaling": cfg.rms_scaling, "layout": info.layout, "qkv_split": cfg.qkv_split,
        "qkv_rows": qkv_rows, "fc1_split": cfg.fc1_split, "tp_group": info.tp_group}


def param_groups(model_chunks: nn.Module | Iterable[nn.Module],
                 cfg: OptimConfig | None = None) -> list[dict[str, Any]]:
    """Optimizer param groups, one per (class, TP group); each names its `algorithm`."""
    cfg = cfg or OptimConfig()
    groups: dict[tuple, dict[str, Any]] = {}
    for name, p, geo in _named_parameters(model_chunks):
        info = _info(name, p, geo["gated"], cfg.algorithm)
        hp = _group_hparams(info, cfg, geo["qkv_rows"])
        key = tuple(sorted((k, str(v)) for k, v in hp.items()))
        group = groups.setdefault(key, hp | {"params": [], "param_names": [],
                                             "name": f"{info.algorithm}/{info.param_class}"
                                                     f"/{info.tp_group or 'replicated'}"})
        group["params"].append(p)
        group["param_names"].append(name)
    return list(groups.values())


def build_optimizer(model_chunks: nn.Module | Iterable[nn.Module], cfg: OptimConfig) -> MuonAdamW:
    """Muon + AdamW (or AdamW only when cfg.algorithm == "adamw") over the model chunks."""
    validate_optim(cfg)
    return MuonAdamW(param_groups(model_chunks, cfg))
