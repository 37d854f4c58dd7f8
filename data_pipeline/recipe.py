"""Compose a data recipe (`recipes/data/<name>.yaml` or a path) over `DataRecipeConfig`."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.config_store import ConfigStore
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import OmegaConf
from omegaconf.errors import OmegaConfBaseException

from data_pipeline.config import DataRecipeConfig, repo_root, validate_build, validate_stage
from exaone_train.errors import ConfigError


def data_recipes_dir() -> Path:
    return repo_root() / "recipes" / "data"


def load_data_recipe(name: str, overrides: list[str] | None = None) -> DataRecipeConfig:
    """Typed, validated data recipe `name` with Hydra `overrides`."""
    ConfigStore.instance().store(name="data_recipe_schema", node=DataRecipeConfig)
    path, config_dir = Path(name), data_recipes_dir()
    if path.suffix in (".yaml", ".yml") and path.exists():
        config_dir, name = path.resolve().parent, path.stem
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            cfg = compose(config_name=name, overrides=list(overrides or []))
        recipe: DataRecipeConfig = OmegaConf.to_object(cfg)  # type: ignore[assignment]
    except (HydraException, OmegaConfBaseException) as e:
        raise ConfigError(f"data recipe {name}", overrides, f"could not be composed: {e}") from None
    finally:
        GlobalHydra.instance().clear()
    validate_build(recipe.build)
    for stage_name, stage in recipe.stages.items():
        validate_stage(stage, f"stages.{stage_name}")
    return recipe
