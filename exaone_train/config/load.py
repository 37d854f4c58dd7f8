"""Compose a recipe with Hydra (compose API: we have subcommands, so no @hydra.main)."""

from __future__ import annotations

import os
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from exaone_train.config.hydra_errors import check_known_keys, compose_error
from exaone_train.config.schema import RecipeConfig, register_configs
from exaone_train.errors import ConfigError


def recipes_dir() -> Path:
    """`$EXAONE_TRAIN_RECIPES`, else the repo's `recipes/`."""
    env = os.environ.get("EXAONE_TRAIN_RECIPES")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "recipes"


def compose_yaml(config_dir: Path, name: str, overrides: list[str] | None,
                 what: str) -> DictConfig:
    """Hydra-compose `name` (a file in `config_dir`, or a .yaml path) with `overrides`;
    Hydra/OmegaConf errors become a ConfigError naming the field (`hydra_errors`), and a key no
    schema has is an error. Leaves Hydra's global state clear."""
    cfg = _compose(config_dir, name, overrides, what)
    check_known_keys(cfg)  # `+key=value` adds keys that Hydra lets through and OmegaConf drops
    return cfg


def _compose(config_dir: Path, name: str, overrides: list[str] | None,
             what: str) -> DictConfig:
    path = Path(name)
    if path.suffix in (".yaml", ".yml") and path.exists():
        config_dir, name = path.resolve().parent, path.stem
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base=None):
            return compose(config_name=name, overrides=list(overrides or []))
    except (HydraException, OmegaConfBaseException) as e:
        raise compose_error(e, f"{what} {name}", overrides) from None
    except (AttributeError, AssertionError) as e:  # OmegaConf, setting a key of a null section
        raise ConfigError(f"{what} {name}", overrides,
                          f"could not be composed ({type(e).__name__}: {e}): a field inside a "
                          "section that is null (e.g. a gate's niah) cannot be set from the "
                          "command line; set the section in the recipe YAML") from None
    finally:
        GlobalHydra.instance().clear()


def compose_recipe(name: str = "tiny_cpu", overrides: list[str] | None = None) -> DictConfig:
    """Resolved, struct-mode DictConfig of recipe `name` (a file in recipes/ or a path)."""
    register_configs()
    cfg = compose_yaml(recipes_dir(), name, overrides, "recipe")
    OmegaConf.resolve(cfg)
    return cfg


def to_object(cfg: DictConfig) -> RecipeConfig:
    """Typed dataclass view of a composed recipe."""
    try:
        return OmegaConf.to_object(cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ConfigError(getattr(e, "full_key", "recipe") or "recipe", None, str(e)) from None


def load_recipe(name: str = "tiny_cpu", overrides: list[str] | None = None,
                runnable_here: bool = True, reads_train_data: bool = True) -> RecipeConfig:
    """Compose, type and validate: the one way every command gets its config. The flags are
    `validate()`'s (False for a plan on a login node, or a command that reads no train data)."""
    from exaone_train.config.validate import validate

    cfg = to_object(compose_recipe(name, overrides))
    validate(cfg, runnable_here=runnable_here, reads_train_data=reads_train_data)
    return cfg
