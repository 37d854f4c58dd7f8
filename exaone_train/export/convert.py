"""HF directory <-> our model checkpoint (`exaone_train.checkpoint.model_checkpoint` format).

Conversion runs on one process with TP=PP=EP=1 (full tensors); the saved checkpoint is
dist_checkpointing, so any later layout loads it. `convert_from_hf` / `convert_to_hf` stream a
tensor at a time (the model is built on the meta device; `exaone_train.export.stream`), so
host memory holds a few tensors, not the model; `*_in_memory` are the former whole-model
paths, kept as the reference the streaming ones are tested against (bitwise equal).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from megatron.core import parallel_state

from exaone_train.checkpoint import progress
from exaone_train.checkpoint.model_checkpoint import MODEL_DIR, read_config
from exaone_train.config.schema import ModelConfig, ParallelConfig, PrecisionConfig, RecipeConfig
from exaone_train.errors import CheckpointError, ConfigError
from exaone_train.export.hf_config import (
    ARCHITECTURE,
    hf_config_to_model_config,
    model_config_to_hf_config,
)
from exaone_train.export.hf_io import (
    MAX_SHARD_BYTES,
    HfShardWriter,
    HfTensorFiles,
    read_hf_config,
    read_hf_tensors,
    write_hf_dir,
)
from exaone_train.export.mapping import (
    Lazy,
    evaluate,
    hf_to_mcore_lazy,
    mcore_to_hf,
    mcore_to_hf_lazy,
    weight_keys,
)
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


def hf_mapping(own: Mapping[str, torch.Tensor], hf_meta: Mapping[str, torch.Tensor],
               m: ModelConfig) -> dict[str, Lazy]:
    """The model's tensors as `Lazy`s of HF tensors, checked against the TP=PP=EP=1 model's
    state dict `own` before anything is read: names both ways (strict on weight names) and
    shapes (evaluated from `hf_meta`, tensors of the HF shapes and dtypes, meta or real)."""
    _require_single_layout()
    lazies = hf_to_mcore_lazy({k: tuple(t.shape) for k, t in hf_meta.items()}, m,
                              own["embedding.word_embeddings.weight"].shape[0])
    missing = sorted(set(weight_keys(own)) - set(lazies))
    extra = sorted(set(lazies) - set(own))
    if missing or extra:
        raise CheckpointError(f"HF -> model mapping mismatch: model weights not provided "
                              f"{missing[:5]}, mapped names the model lacks {extra[:5]}")
    meta = {k: t.to("meta") for k, t in hf_meta.items()}
    for key, t in evaluate(lazies, meta).items():
        if own[key].shape != t.shape:
            raise CheckpointError(f"{key}: HF gives shape {tuple(t.shape)}, model has "
                                  f"{tuple(own[key].shape)}")
    return lazies


def load_hf_state_dict(model: torch.nn.Module, hf_tensors: dict[str, torch.Tensor],
                       m: ModelConfig) -> None:
    """Copy HF tensors into a TP=PP=EP=1 model built from `m` (strict on weight names)."""
    own = model.state_dict()
    lazies = hf_mapping(own, hf_tensors, m)
    with torch.no_grad():
        for key, lz in lazies.items():
            own[key].copy_(lz(hf_tensors.__getitem__).to(own[key].dtype))


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


def _import_recipe(hf_dir: str | Path, hf_keys: list[str],
                   precision: PrecisionConfig | None) -> RecipeConfig:
    """The validated recipe of a HF import, with the (TP=PP=EP=1) parallel state set up."""
    from exaone_train.config.validate import validate
    from exaone_train.parallel import state

    m = model_config_for_hf(read_hf_config(hf_dir), hf_keys,
                            name=Path(hf_dir).name or "hf_import")
    cfg = RecipeConfig(model=m, parallel=ParallelConfig(),
                       precision=precision or PrecisionConfig(dtype="fp32"))
    validate(cfg, reads_train_data=False)
    state.setup(cfg.parallel, cfg.seed)
    return cfg


def convert_from_hf(hf_dir: str | Path, out_dir: str | Path,
                    precision: PrecisionConfig | None = None,
                    show_progress: bool = False) -> RecipeConfig:
    """HF directory -> model checkpoint at `out_dir`, a tensor at a time (single process, local
    spec): the model is built on the meta device; each of its tensors is mapped from the HF
    tensors it needs (read one by one from the safetensors files) when the checkpoint writer
    reaches it. Peak memory is a few of the largest tensors, not the model."""
    from exaone_train.export.stream import save_streaming
    from exaone_train.model.builder import build_model

    read_hf_config(hf_dir)  # a clear error first when it is not a HF directory
    files = HfTensorFiles(hf_dir)
    cfg = _import_recipe(hf_dir, list(files.meta), precision)
    model = build_model(cfg.model, cfg.parallel, conversion_precision(cfg.precision), meta=True)
    own = model.state_dict()
    lazies = hf_mapping(own, files.meta, cfg.model)

    def produce(key: str) -> torch.Tensor:
        return lazies[key](files.load).to(own[key].dtype)

    save_streaming(model, cfg, out_dir, produce, show_progress)
    log.info("converted %s -> %s (padded vocab %d)", hf_dir, out_dir,
             padded_vocab_size(cfg.model, cfg.parallel.tp))
    return cfg


def convert_from_hf_in_memory(hf_dir: str | Path, out_dir: str | Path,
                              precision: PrecisionConfig | None = None) -> RecipeConfig:
    """`convert_from_hf` with the whole model in memory (the HF tensors, then the built model):
    the reference the streaming conversion is tested against."""
    from exaone_train.checkpoint.model_checkpoint import save_model_checkpoint
    from exaone_train.model.builder import build_model

    read_hf_config(hf_dir)
    tensors = read_hf_tensors(hf_dir)
    cfg = _import_recipe(hf_dir, list(tensors), precision)
    model = build_model(cfg.model, cfg.parallel, conversion_precision(cfg.precision))
    load_hf_state_dict(model, tensors, cfg.model)
    save_model_checkpoint(model, cfg, out_dir)
    return cfg


def _export_recipe(ckpt_dir: Path) -> RecipeConfig:
    """The checkpoint's recipe as conversion loads it (TP=PP=EP=1, local spec, fp32), with
    the parallel state set up."""
    from exaone_train.config.validate import validate
    from exaone_train.parallel import state

    cfg = dataclasses.replace(read_config(ckpt_dir), parallel=ParallelConfig(),
                              precision=conversion_precision(None))
    validate(cfg, reads_train_data=False)
    if not (ckpt_dir / MODEL_DIR / "metadata.json").is_file():
        raise CheckpointError(f"{ckpt_dir / MODEL_DIR}: no dist_checkpointing metadata.json "
                              "(incomplete or not a model checkpoint)")
    state.setup(cfg.parallel, cfg.seed)
    return cfg


def convert_to_hf(ckpt_dir: str | Path, out_dir: str | Path,
                  max_shard_bytes: int = MAX_SHARD_BYTES, show_progress: bool = False) -> Path:
    """Model checkpoint -> HF directory (`transformers` loads it as ExaoneMoeForCausalLM /
    Exaone4ForCausalLM; MTP tensors under `mtp.*`), a tensor at a time: each checkpoint
    tensor is read, mapped, and its HF tensors written to their planned safetensors shard."""
    from exaone_train.export.stream import checkpoint_tensors, tensor_entries
    from exaone_train.model.builder import build_model

    ckpt_dir = Path(ckpt_dir)
    cfg = _export_recipe(ckpt_dir)
    hf_config = model_config_to_hf_config(cfg.model)  # before writing: may raise ConfigError
    model = build_model(cfg.model, cfg.parallel, cfg.precision, meta=True)
    entries = tensor_entries(model)
    lazies = mcore_to_hf_lazy(entries.keys(), cfg.model)
    for_entry: dict[str, list[str]] = {key: [] for key in entries}
    for hf_key, lz in lazies.items():
        for_entry[lz.inputs[0]].append(hf_key)  # every HF tensor comes from one of ours
    meta = evaluate(lazies, model.state_dict())
    plan = [(hf_key, meta[hf_key]) for key in entries for hf_key in for_entry[key]]
    writer = HfShardWriter(out_dir, hf_config, ARCHITECTURE[cfg.model.family], plan,
                           max_shard_bytes)
    bar = progress.bar("convert: HF write", sum(t.numel() * t.element_size() for _, t in plan),
                       show_progress)
    for key, tensor in checkpoint_tensors(entries, ckpt_dir / MODEL_DIR):
        source = {key: tensor}
        for hf_key in for_entry[key]:
            out = lazies[hf_key](source.__getitem__)
            writer.write(hf_key, out)
            if bar is not None:
                bar.update(out.numel() * out.element_size())
    if bar is not None:
        bar.close()
    return writer.close()


def convert_to_hf_in_memory(ckpt_dir: str | Path, out_dir: str | Path) -> Path:
    """`convert_to_hf` with the whole model in memory: the streaming conversion's reference."""
    from exaone_train.checkpoint.model_checkpoint import load_model_checkpoint

    cfg, model = load_model_checkpoint(ckpt_dir, parallel_cfg=ParallelConfig(),
                                       precision_cfg=conversion_precision(None))
    hf_config = model_config_to_hf_config(cfg.model)  # before writing: may raise ConfigError
    tensors = export_hf_state_dict(model, cfg.model)
    return write_hf_dir(out_dir, hf_config, tensors, ARCHITECTURE[cfg.model.family])
