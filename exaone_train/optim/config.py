"""`OptimConfig`: the recipe's `optim:` section (Muon + AdamW parameter groups, WSD schedule).

Units are in the names: LRs are per-step rates, schedule positions are consumed TOKENS (so a
batch-size change between curriculum stages never moves the schedule).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from exaone_train.errors import ConfigError

ALGORITHMS = ("muon", "adamw")
SHAPES = ("linear", "cosine", "1-sqrt")
RMS_SCALINGS = ("original", "match_rms_adamw", "none")
QKV_SPLITS = ("none", "qkv", "per_group")
FC1_SPLITS = ("none", "gate_up")
NS_DTYPES = ("bf16", "fp32")
PARAM_CLASSES = ("qkv", "fc1", "matrix", "embedding", "output", "norm", "bias", "router", "other")


@dataclass
class ScheduleConfig:
    """Warmup-stable-decay over the whole curriculum, positioned by consumed tokens.

    Phases: warmup [0, warmup_tokens) from `lr_warmup_start` (None: lr_min, as in
    `transformers.get_wsd_schedule`) to the peak; stable at the peak; decay over the last
    `decay_tokens` (or `decay_fraction * total_tokens`) of `total_tokens` down to lr_min; lr_min
    after `total_tokens`.
    """

    total_tokens: int | None = None  # None: the trainer fills in the curriculum's token total
    warmup_tokens: int = 0
    warmup_shape: str = "linear"  # linear | cosine | 1-sqrt
    decay_shape: str = "1-sqrt"  # linear | cosine | 1-sqrt
    decay_fraction: float | None = 0.1  # of total_tokens; ignored when decay_tokens is set
    decay_tokens: int | None = None
    lr_min_ratio: float = 0.0  # lr_min = lr_min_ratio * peak (per group, after multipliers)
    lr_warmup_start_ratio: float | None = None  # None: start warmup at lr_min_ratio


@dataclass
class OptimConfig:
    """Optimizer: Muon on 2-D hidden matrices, AdamW on everything else (see optim/muon.py)."""

    algorithm: str = "muon"  # muon (Muon + AdamW groups) | adamw (AdamW on every parameter)
    lr_peak: float = 3e-4  # the AdamW peak LR; Muon uses lr_peak * muon_lr_multiplier
    muon_lr_multiplier: float = 1.0  # 1.0 with rms_scaling=match_rms_adamw (Moonlight)
    adamw_lr_multiplier: float = 1.0
    # Extra per-class multipliers, keys from PARAM_CLASSES, e.g. {embedding: 0.5}.
    class_lr_multipliers: dict[str, float] = field(default_factory=dict)
    weight_decay: float = 0.1  # decoupled: p *= 1 - lr * weight_decay (both algorithms)
    no_weight_decay_classes: list[str] = field(default_factory=lambda: ["norm", "bias"])
    # AdamW
    adamw_beta1: float = 0.9
    adamw_beta2: float = 0.95
    adamw_eps: float = 1e-8
    # Muon (defaults: torch.optim.Muon / Keller Jordan's)
    muon_momentum: float = 0.95
    muon_nesterov: bool = True
    ns_steps: int = 5
    ns_coefficients: list[float] = field(default_factory=lambda: [3.4445, -4.7750, 2.0315])
    ns_eps: float = 1e-7
    ns_dtype: str = "bf16"  # bf16 (as torch.optim.Muon) | fp32
    rms_scaling: str = "match_rms_adamw"  # original | match_rms_adamw | none
    qkv_split: str = "none"  # none | qkv (all Q, all K, all V) | per_group (each group's q, k, v)
    fc1_split: str = "none"  # none ([gate; up] as one matrix) | gate_up
    clip_grad: float = 1.0  # global grad-norm clip, 0 = off (applied by the trainer)
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)


def _one_of(field_path: str, value: object, allowed: tuple) -> None:
    if value not in allowed:
        raise ConfigError(field_path, value, f"must be one of {', '.join(map(str, allowed))}")


def _positive(field_path: str, value: float | int | None, allow_zero: bool = False) -> None:
    if value is None or value < 0 or (value == 0 and not allow_zero):
        raise ConfigError(field_path, value, ">= 0 required" if allow_zero else "> 0 required")


def validate_schedule(s: ScheduleConfig, prefix: str = "optim.schedule") -> None:
    """Raise ConfigError for a schedule that cannot be laid out (total_tokens may be None)."""
    _one_of(f"{prefix}.warmup_shape", s.warmup_shape, SHAPES)
    _one_of(f"{prefix}.decay_shape", s.decay_shape, SHAPES)
    _positive(f"{prefix}.warmup_tokens", s.warmup_tokens, allow_zero=True)
    if not 0.0 <= s.lr_min_ratio <= 1.0:
        raise ConfigError(f"{prefix}.lr_min_ratio", s.lr_min_ratio, "must lie in [0, 1]")
    if s.lr_warmup_start_ratio is not None and not 0.0 <= s.lr_warmup_start_ratio <= 1.0:
        raise ConfigError(f"{prefix}.lr_warmup_start_ratio", s.lr_warmup_start_ratio,
                          "must lie in [0, 1]")
    if s.decay_tokens is None:
        if s.decay_fraction is None or not 0.0 <= s.decay_fraction <= 1.0:
            raise ConfigError(f"{prefix}.decay_fraction", s.decay_fraction,
                              "must lie in [0, 1] when decay_tokens is not set")
    else:
        _positive(f"{prefix}.decay_tokens", s.decay_tokens, allow_zero=True)
    if s.total_tokens is not None:
        _positive(f"{prefix}.total_tokens", s.total_tokens)
        used = s.warmup_tokens + decay_tokens_of(s)
        if used > s.total_tokens:
            raise ConfigError(prefix, f"warmup_tokens={s.warmup_tokens} decay={decay_tokens_of(s)}",
                              f"warmup + decay must fit in total_tokens={s.total_tokens}")


def decay_tokens_of(s: ScheduleConfig) -> int:
    """Length of the decay phase in tokens (explicit, else a fraction of total_tokens)."""
    if s.decay_tokens is not None:
        return s.decay_tokens
    if s.total_tokens is None:
        raise ConfigError("optim.schedule.total_tokens", None,
                          "needed to size the decay from decay_fraction")
    return int(round(s.decay_fraction * s.total_tokens))  # type: ignore[operator]


def validate_optim(c: OptimConfig, prefix: str = "optim") -> None:
    """One pass over the `optim:` section; raises ConfigError naming the field."""
    _one_of(f"{prefix}.algorithm", c.algorithm, ALGORITHMS)
    _one_of(f"{prefix}.rms_scaling", c.rms_scaling, RMS_SCALINGS)
    _one_of(f"{prefix}.qkv_split", c.qkv_split, QKV_SPLITS)
    _one_of(f"{prefix}.fc1_split", c.fc1_split, FC1_SPLITS)
    _one_of(f"{prefix}.ns_dtype", c.ns_dtype, NS_DTYPES)
    for name in ("lr_peak", "muon_lr_multiplier", "adamw_lr_multiplier"):
        _positive(f"{prefix}.{name}", getattr(c, name), allow_zero=True)
    for name in ("weight_decay", "muon_momentum", "clip_grad"):
        _positive(f"{prefix}.{name}", getattr(c, name), allow_zero=True)
    for name in ("adamw_beta1", "adamw_beta2", "muon_momentum"):
        if not 0.0 <= getattr(c, name) < 1.0:
            raise ConfigError(f"{prefix}.{name}", getattr(c, name), "must lie in [0, 1)")
    _positive(f"{prefix}.adamw_eps", c.adamw_eps)
    if not 1 <= c.ns_steps < 100:
        raise ConfigError(f"{prefix}.ns_steps", c.ns_steps, "must lie in [1, 100)")
    if len(c.ns_coefficients) != 3:
        raise ConfigError(f"{prefix}.ns_coefficients", c.ns_coefficients, "needs exactly 3 values")
    for key, mult in c.class_lr_multipliers.items():
        _one_of(f"{prefix}.class_lr_multipliers", key, PARAM_CLASSES)
        _positive(f"{prefix}.class_lr_multipliers.{key}", mult, allow_zero=True)
    for key in c.no_weight_decay_classes:
        _one_of(f"{prefix}.no_weight_decay_classes", key, PARAM_CLASSES)
    validate_schedule(c.schedule, f"{prefix}.schedule")
