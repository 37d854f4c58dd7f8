"""HF directory <-> our model checkpoint (`exaone_train.checkpoint.model_io` format).

Conversion runs on one process with TP=PP=EP=1 (full tensors); the saved checkpoint is
dist_checkpointing, so any later layout loads it.
"""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from megatron.core import parallel_state

from exaone_train.config.schema import ModelConfig, ParallelConfig, PrecisionConfig, RecipeConfig
from exaone_train.errors import CheckpointError, ConfigError
from exaone_train.export.hf_config import (
    ARCHITECTURE,
    hf_config_to_model_config,
    model_config_to_hf_config,
)
from exaone_train.export.hf_io import read_hf_config, read_hf_tensors, write_hf_dir
from exaone_train.export.mapping import hf_to_mcore, mcore_to_hf, weight_keys
from exaone_train.model.layout import padded_vocab_size

log = logging.getLogger(__name__)


def _require_single_layout() -> None:
    sizes = (parallel_state.get_tensor_model_parallel_world_size(),
             parallel_state.get_pipeline_model_parallel_world_size(),
             parallel_state.get_expert_model_parallel_world_size())
    if sizes != (1, 1, 1):
        raise ConfigError("parallel", sizes, "HF conversion needs tp=pp=ep=1 (full tensors)")


def model_config_for_hf(hf_config: Any, hf_keys: list[str], name: str) -> ModelConfig:
    """ModelConfig for a HF model, with `mtp_num_layers` following the weights present: a
    checkpoint without `mtp.*` tensors (e.g. transformers' own save) imports without MTP."""
    m = hf_config_to_model_config(hf_config, name=name)
    has_mtp = any(k.startswith("mtp.") for k in hf_keys)
    if m.family == "kexaone" and has_mtp != bool(m.mtp_num_layers):
        if m.mtp_num_layers:
            log.warning("config asks for %d MTP layer(s) but the checkpoint has no mtp.* "
                        "tensors: importing without MTP", m.mtp_num_layers)
        m.mtp_num_layers = 1 if has_mtp else 0
    return m


def load_hf_state_dict(model: torch.nn.Module, hf_tensors: dict[str, torch.Tensor],
                       m: ModelConfig) -> None:
    """Copy HF tensors into a TP=PP=EP=1 model built from `m` (strict on weight names)."""
    _require_single_layout()
    own = model.state_dict()
    mapped = hf_to_mcore(hf_tensors, m, own["embedding.word_embeddings.weight"].shape[0])
    missing = sorted(set(weight_keys(own)) - set(mapped))
    extra = sorted(set(mapped) - set(own))
    if missing or extra:
        raise CheckpointError(f"HF -> model mapping mismatch: model weights not provided "
                              f"{missing[:5]}, mapped names the model lacks {extra[:5]}")
    with torch.no_grad():
        for key, t in mapped.items():
            if own[key].shape != t.shape:
                raise CheckpointError(f"{key}: HF gives shape {tuple(t.shape)}, model has "
                                      f"{tuple(own[key].shape)}")
            own[key].copy_(t.to(own[key].dtype))


def export_hf_state_dict(model: torch.nn.Module, m: ModelConfig) -> dict[str, torch.Tensor]:
    """HF-named tensors of a TP=PP=EP=1 model."""
    _require_single_layout()
    return mcore_to_hf(model.state_dict(), m)


def conversion_precision(precision: PrecisionConfig | None) -> PrecisionConfig:
    """The precision conversion builds with: always megatron-core's local spec. With
    Transformer Engine installed `auto` would pick TE and its grouped experts
    (`experts.linear_fc1.weight{e}`), which `mapping.py` does not name; the local spec's
    SequentialMLP and TEGroupedMLP save the same dist_checkpointing keys, so a converted
    checkpoint still loads into a TE model."""
    precision = precision or PrecisionConfig(dtype="fp32")
    if precision.transformer_impl == "transformer_engine" or precision.fp8:
        field = "fp8" if precision.fp8 else "transformer_impl"
        raise ConfigError(f"precision.{field}", getattr(precision, field),
                          "conversion builds the local spec (no Transformer Engine, no FP8); "
                          "the checkpoint it writes loads under either")
    return dataclasses.replace(precision, transformer_impl="local")


def convert_from_hf(hf_dir: str | Path, out_dir: str | Path,
                    precision: PrecisionConfig | None = None) -> RecipeConfig:
    """HF directory -> model checkpoint at `out_dir` (single process, local spec)."""
    from exaone_train.checkpoint.model_io import save_model_checkpoint
    from exaone_train.config.validate import validate
    from exaone_train.model.builder import build_model
    from exaone_train.parallel import state

    hf_config = read_hf_config(hf_dir)
    tensors = read_hf_tensors(hf_dir)
    m = model_config_for_hf(hf_config, list(tensors), name=Path(hf_dir).name or "hf_import")
    cfg = RecipeConfig(model=m, parallel=ParallelConfig(),
                       precision=precision or PrecisionConfig(dtype="fp32"))
    validate(cfg, reads_train_data=False)
    state.setup(cfg.parallel, cfg.seed)
    model = build_model(cfg.model, cfg.parallel, conversion_precision(cfg.precision))
    load_hf_state_dict(model, tensors, m)
    save_model_checkpoint(model, cfg, out_dir)
    log.info("converted %s -> %s (padded vocab %d)", hf_dir, out_dir,
             padded_vocab_size(m, cfg.parallel.tp))
    return cfg


def convert_to_hf(ckpt_dir: str | Path, out_dir: str | Path) -> Path:
    """Model checkpoint -> HF directory (`transformers` loads it as ExaoneMoeForCausalLM /
    Exaone4ForCausalLM; MTP tensors under `mtp.*`)."""
    from exaone_train.checkpoint.model_io import load_model_checkpoint

    cfg, model = load_model_checkpoint(ckpt_dir, parallel_cfg=ParallelConfig(),
                                       precision_cfg=conversion_precision(None))
    hf_config = model_config_to_hf_config(cfg.model)  # before writing: may raise ConfigError
    tensors = export_hf_state_dict(model, cfg.model)
    return write_hf_dir(out_dir, hf_config, tensors, ARCHITECTURE[cfg.model.family])
