"""The optim recipes are values for OptimConfig (struct mode) and pass validation."""

from __future__ import annotations

from pathlib import Path

import pytest
from omegaconf import OmegaConf

from exaone_train.errors import ConfigError
from exaone_train.optim.config import OptimConfig, ScheduleConfig, validate_optim

RECIPES = Path(__file__).resolve().parents[2] / "recipes" / "optim"


@pytest.mark.parametrize("name,algorithm", [("muon_wsd", "muon"), ("adamw_wsd", "adamw")])
def test_optim_recipe_is_an_optim_config(name: str, algorithm: str) -> None:
    merged = OmegaConf.merge(OmegaConf.structured(OptimConfig),
                             OmegaConf.load(RECIPES / f"{name}.yaml"))
    cfg: OptimConfig = OmegaConf.to_object(merged)  # type: ignore[assignment]
    assert isinstance(cfg.schedule, ScheduleConfig) and cfg.algorithm == algorithm
    validate_optim(cfg)
    cfg.schedule.total_tokens = 10 * cfg.schedule.warmup_tokens
    validate_optim(cfg)


def test_unknown_key_is_rejected() -> None:
    with pytest.raises(Exception, match="muon_lr"):
        OmegaConf.merge(OmegaConf.structured(OptimConfig), {"muon_lr": 0.02})


@pytest.mark.parametrize("field,value,message", [
    ("qkv_split", "per_head", "optim.qkv_split"),
    ("ns_steps", 0, "optim.ns_steps"),
    ("adamw_beta2", 1.0, "optim.adamw_beta2"),
    ("no_weight_decay_classes", ["norms"], "optim.no_weight_decay_classes"),
])
def test_bad_values_name_their_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        validate_optim(OptimConfig(**{field: value}))
