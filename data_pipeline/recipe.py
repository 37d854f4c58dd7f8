"""Compose a data recipe (`recipes/data/<name>.yaml` or a path) over `DataRecipeConfig`."""

from __future__ import annotations

from pathlib import Path

from hydra.core.config_store import ConfigStore
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data_pipeline.config import DataRecipeConfig, repo_root, validate_build, validate_stage
from exaone_train.config.load import compose_yaml
from exaone_train.errors import ConfigError


def data_recipes_dir() -> Path:
    return repo_root() / "recipes" / "data"


def load_data_recipe(name: str, overrides: list[str] | None = None) -> DataRecipeConfig:
    """Typed, validated data recipe `name` with Hydra `overrides`."""
    ConfigStore.instance().store(name="data_recipe_schema", node=DataRecipeConfig)
    cfg = compose_yaml(data_recipes_dir(), name, overrides, "data recipe")
    try:
        recipe: DataRecipeConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except OmegaConfBaseException as e:
        raise ConfigError(f"data recipe {name}", overrides, f"could not be typed: {e}") from None
    validate_build(recipe.build)
    for stage_name, stage in recipe.stages.items():
        validate_stage(stage, f"stages.{stage_name}")
    return recipe
