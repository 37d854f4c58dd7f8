"""The model checkpoint format (training checkpoints build on it):

    CKPT_DIR/
      config.yaml   the resolved recipe (OmegaConf YAML of RecipeConfig; `model` at least)
      model/        megatron-core dist_checkpointing of `model.sharded_state_dict()`
                    (torch_dist strategy, synchronous): loadable under any TP/PP/EP layout

`save_model_checkpoint` is collective (every rank of the model calls it); so is
`load_model_checkpoint`. A script that saves must run under `if __name__ == "__main__"`
(dist_checkpointing may start worker processes).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from megatron.core import dist_checkpointing, parallel_state
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from exaone_train.config.schema import ParallelConfig, PrecisionConfig, RecipeConfig
from exaone_train.errors import CheckpointError
from exaone_train.parallel import ranks

CONFIG_FILE, MODEL_DIR = "config.yaml", "model"
# Settings nothing read, removed from the schema; checkpoints saved before still carry them.
RETIRED_KEYS = (("extra",), ("train", "eval_interval_steps"), ("train", "reset_position_ids"),
                ("run", "name"))




def write_config(cfg: RecipeConfig, ckpt_dir: Path) -> None:
    """config.yaml: the resolved recipe, rank 0 only."""
    if ranks.rank() == 0:
        text = OmegaConf.to_yaml(OmegaConf.structured(cfg))
        (ckpt_dir / CONFIG_FILE).write_text(text)


def read_config(ckpt_dir: str | Path) -> RecipeConfig:
    """The recipe saved with a checkpoint, typed (unknown keys are an error)."""
    path = Path(ckpt_dir) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(f"{ckpt_dir}: no {CONFIG_FILE} (not a model checkpoint)")
    try:
        saved = OmegaConf.load(path)
        for *section, key in RETIRED_KEYS:
            node = OmegaConf.select(saved, ".".join(section)) if section else saved
            if isinstance(node, DictConfig) and key in node:
                node.pop(key)
        merged = OmegaConf.merge(OmegaConf.structured(RecipeConfig), saved)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise CheckpointError(f"{path}: does not match the recipe schema: {e}") from None


def sharded_model_state_dict(model: Any) -> dict:
    """`model.sharded_state_dict` with the metadata every save and load of this format uses:
    per-layer keys (`decoder.layers.N.*`, global N; needed anyway for MoE's mixed layers) and
    the data-parallel group (an MTP stage's embedding copy needs it under PP)."""
    metadata = {"dp_cp_group": parallel_state.get_data_parallel_group(with_context_parallel=True),
                "non_homogeneous_layers": True}
    return model.sharded_state_dict(metadata=metadata)


def save_model_checkpoint(model: torch.nn.Module, cfg: RecipeConfig,
                          ckpt_dir: str | Path) -> Path:
    """Save `model` (this rank's part of a GPTModel) and `cfg` to `ckpt_dir` (collective)."""
    ckpt_dir = Path(ckpt_dir)
    model_dir = ckpt_dir / MODEL_DIR
    if ranks.rank() == 0:
        model_dir.mkdir(parents=True, exist_ok=True)
        if any(model_dir.iterdir()):
            raise CheckpointError(f"{model_dir} is not empty: refusing to overwrite a checkpoint")
    ranks.barrier()
    dist_checkpointing.save(sharded_model_state_dict(model), str(model_dir),
                            sharded_strategy=("torch_dist", 1), async_sharded_save=False)
    write_config(cfg, ckpt_dir)
    ranks.barrier()
    return ckpt_dir


def _ensure_parallel_state(cfg: RecipeConfig) -> None:
    """Use the caller's model-parallel state when it exists (it must match cfg.parallel),
    else set it up for cfg.parallel."""
    from exaone_train.parallel import state

    if not parallel_state.model_parallel_is_initialized():
        state.setup(cfg.parallel, cfg.seed)
        return
    have = (parallel_state.get_tensor_model_parallel_world_size(),
            parallel_state.get_pipeline_model_parallel_world_size(),
            parallel_state.get_expert_model_parallel_world_size())
    want = (cfg.parallel.tp, cfg.parallel.pp, cfg.parallel.ep)
    if have != want:
        raise CheckpointError(f"model-parallel state is (tp, pp, ep)={have} but the load asks "
                              f"for {want}: pass parallel_cfg matching the initialised layout")


def load_model_checkpoint(ckpt_dir: str | Path, parallel_cfg: ParallelConfig | None = None,
                          precision_cfg: PrecisionConfig | None = None,
                          ) -> tuple[RecipeConfig, torch.nn.Module]:
    """Build this rank's model for `parallel_cfg` (default: the saved layout) and load the
    checkpoint into it; dist_checkpointing reshards across layouts. Returns (cfg, model)."""
    from exaone_train.config.validate import validate
    from exaone_train.model.builder import build_model

    ckpt_dir = Path(ckpt_dir)
    cfg = read_config(ckpt_dir)
    if parallel_cfg is not None:
        cfg = dataclasses.replace(cfg, parallel=parallel_cfg)
    if precision_cfg is not None:
        cfg = dataclasses.replace(cfg, precision=precision_cfg)
    validate(cfg, reads_train_data=False)  # the model's rules; no training data is read
    model_dir = ckpt_dir / MODEL_DIR
    if not (model_dir / "metadata.json").is_file():
        raise CheckpointError(f"{model_dir}: no dist_checkpointing metadata.json "
                              "(incomplete or not a model checkpoint)")
    _ensure_parallel_state(cfg)
    model = build_model(cfg.model, cfg.parallel, cfg.precision)
    try:
        state_dict = dist_checkpointing.load(sharded_model_state_dict(model), str(model_dir))
    except Exception as e:  # noqa: BLE001 - megatron raises several types; name the checkpoint
        raise CheckpointError(f"{model_dir}: could not be loaded into model {cfg.model.name!r} "
                              f"with layout {cfg.parallel}: {type(e).__name__}: {e}") from e
    model.load_state_dict(state_dict)
    return cfg, model
