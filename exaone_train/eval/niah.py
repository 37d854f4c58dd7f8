"""Needle-In-A-Haystack: the context-extension stage gate (MODELS.md, "Context extension").

`run_niah(trainer, cfg, out_dir, name)` builds the samples of every (length, depth) cell
(`niah_samples`), scores them under the trainer's parallel layout, and writes
`out_dir/niah/<name>.json` and `.png`. Collective: every rank calls it and gets the same report.

Scoring: exact match of the whole answer under greedy decoding. Greedy decoding yields the
answer iff at every answer position the argmax of the next-token logits, given the prompt and
the answer's earlier tokens, is the answer's next token: if all teacher-forced argmaxes match,
greedy decoding walks the same path; at the first mismatch it leaves it. So one forward pass
per sample (samples of a length batched) replaces a generation loop. The argmax runs over the
tokenizer vocab (`model.vocab_size`; the rows padded for TP are never predicted).

Under the layouts:
- the forward is megatron-core's schedule (`get_forward_backward_func`, forward only), so
  PP / VPP / EP run as in training; samples are split over the DP ranks (all DP ranks run the
  same number of micro-batches, as EP's all-to-all needs) and gathered after;
- only the answer positions reach the output layer (a pre-hook on `output_layer` keeps them,
  gathering the sequence first under SP, as megatron's own inference path does): logits of
  the whole sequence would be [s, b, V/tp], tens of GB at 256K;
- TP: the vocab shards of those few logits are all-gathered and argmaxed whole (ties resolve
  to the lower token id, as one process would);
- CP: each rank holds the load-balanced chunks of the sequence (`step.collate`'s layout);
  the answer positions map to the rank holding them, others report -1, and a max over the CP
  group assembles the predictions;
- MTP: skipped for the forward (`export.forward.main_head_only`'s switch): megatron runs the
  MTP block whenever the model has one and then needs labels; the main head does not depend
  on it.
The model runs in eval mode under `torch.no_grad()` (no expert-bias token counts, no aux
losses) and gets its modes back; weights, grads and buffers are untouched.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel.mappings import (
    gather_from_sequence_parallel_region,
    gather_from_tensor_model_parallel_region,
)

from exaone_train.errors import ConfigError
from exaone_train.eval.niah_config import NiahConfig
from exaone_train.eval.niah_samples import NiahSample, load_haystacks, make_samples
from exaone_train.parallel import ranks, state
from exaone_train.parallel.context import load_balanced_positions, slice_for_cp_rank
from exaone_train.parallel.dims import ParallelDims
from exaone_train.train.step import reset_moe_aux_scale

log = logging.getLogger("exaone_train")


@dataclass
class NiahReport:
    passed: bool
    mean_accuracy: float
    min_cell_accuracy: float
    grid: dict[int, dict[float, float]]  # grid[length][depth] = exact-match accuracy
    name: str = ""
    # teacher-forced answer tokens predicted right, over all answer tokens: a softer signal than
    # exact match for models still far from the gate (not part of `passed`)
    token_accuracy: float = 0.0
    samples: list[dict] = field(default_factory=list)  # one per sample: where, what, predicted
    config: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        lengths = sorted(self.grid)
        depths = sorted({d for row in self.grid.values() for d in row})
        return {"name": self.name, "passed": self.passed, "mean_accuracy": self.mean_accuracy,
                "min_cell_accuracy": self.min_cell_accuracy,
                "token_accuracy": self.token_accuracy, "lengths": lengths, "depths": depths,
                "accuracy": [[self.grid[n][d] for d in depths] for n in lengths],
                "config": self.config, "samples": self.samples}


# ---- validation ---------------------------------------------------------------------------
def validate_niah(cfg: NiahConfig, recipe: Any, where: str = "niah") -> None:
    """ConfigError (naming `where`.<field>) for a NIAH config the recipe's model, stage length
    or layout cannot run. `recipe` is a RecipeConfig."""
    _check_values(cfg, where)
    m, t, p = recipe.model, recipe.train, recipe.parallel
    dims = ParallelDims.of(p)
    for n in cfg.lengths:
        if n > m.max_position_embeddings:
            raise ConfigError(f"{where}.lengths", cfg.lengths, f"{n} exceeds the model's position "
                              f"capacity model.max_position_embeddings={m.max_position_embeddings}")
        if n > t.seq_length_tokens:
            raise ConfigError(f"{where}.lengths", cfg.lengths, f"{n} exceeds the stage's "
                              f"train.seq_length_tokens={t.seq_length_tokens}")
        rule = dims.seq_rule(n)
        if rule:
            raise ConfigError(f"{where}.lengths", cfg.lengths, f"{n}: {rule}")


def _check_values(cfg: NiahConfig, where: str) -> None:
    if not cfg.lengths or not cfg.depths:
        raise ConfigError(f"{where}.lengths/depths", (cfg.lengths, cfg.depths), "must not be empty")
    if cfg.samples_per_cell < 1:
        raise ConfigError(f"{where}.samples_per_cell", cfg.samples_per_cell, "must be >= 1")
    if not all(0.0 <= d <= 1.0 for d in cfg.depths):
        raise ConfigError(f"{where}.depths", cfg.depths, "every depth must lie in [0, 1]")
    for f in ("pass_accuracy", "min_cell_accuracy"):
        if not 0.0 <= getattr(cfg, f) <= 1.0:
            raise ConfigError(f"{where}.{f}", getattr(cfg, f), "must lie in [0, 1]")
    if cfg.micro_batch_samples is not None and cfg.micro_batch_samples < 1:
        raise ConfigError(f"{where}.micro_batch_samples", cfg.micro_batch_samples, "must be >= 1")


# ---- the model under evaluation -----------------------------------------------------------
def _gpt(chunk: Any) -> Any:
    """The GPTModel inside DDP / Float16Module wrappers."""
    while hasattr(chunk, "module"):
        chunk = chunk.module
    return chunk


@contextlib.contextmanager
def _evaluating(chunks: list) -> Iterator[None]:
    """Eval mode, no grad, no MTP for the duration; every module's mode and the MTP switches
    come back as they were."""
    modes = [(m, m.training) for c in chunks for m in c.modules()]
    models = [_gpt(c) for c in chunks]
    mtp = [(g, getattr(g, "mtp_process", False)) for g in models]
    configs = {id(g.config): (g.config, g.config.mtp_num_layers) for g in models}
    try:
        for c in chunks:
            c.eval()
        for g in models:
            g.mtp_process = False
        for config, _ in configs.values():
            config.mtp_num_layers = None
        with torch.no_grad():
            yield
    finally:
        for m, mode in modes:
            m.training = mode
        for g, flag in mtp:
            g.mtp_process = flag
        for config, n in configs.values():
            config.mtp_num_layers = n


@contextlib.contextmanager
def _logits_only_at(chunks: list, local_index: torch.Tensor) -> Iterator[None]:
    """Feed only the sequence rows `local_index` (this CP rank's local order) to the output
    layer. Under SP the rows are gathered over TP first and the layer's own gather is off for
    the duration (megatron-core's inference path flips the same switch)."""
    layers = [_gpt(c).output_layer for c in chunks if getattr(_gpt(c), "post_process", False)]
    saved = [(layer, layer.sequence_parallel) for layer in layers]

    def keep_rows(gather_sp: bool, module, args, kwargs):
        hidden_SBH = args[0]
        if gather_sp:
            hidden_SBH = gather_from_sequence_parallel_region(hidden_SBH, group=module.tp_group)
        return (hidden_SBH.index_select(0, local_index.to(hidden_SBH.device)), *args[1:]), kwargs

    handles = []
    try:
        for layer, sp in saved:
            layer.sequence_parallel = False
            handles.append(layer.register_forward_pre_hook(partial(keep_rows, sp),
                                                           with_kwargs=True))
        yield
    finally:
        for h in handles:
            h.remove()
        for layer, sp in saved:
            layer.sequence_parallel = sp


# ---- scoring ------------------------------------------------------------------------------
@dataclass
class _Micro:
    input_ids: torch.Tensor
    position_ids: torch.Tensor


def _forward_step(data_iterator: Iterator[_Micro], model):
    b = next(data_iterator)
    return model(b.input_ids, b.position_ids, None), _keep_logits


def _keep_logits(logits_BKV: torch.Tensor, non_loss_data: bool = False) -> torch.Tensor:
    return logits_BKV


def _argmax_over_vocab(logits_BKV: torch.Tensor, vocab_size: int) -> torch.Tensor:
    """Argmax over the whole (TP-gathered) vocab, tokenizer ids only."""
    if parallel_state.get_tensor_model_parallel_world_size() > 1:
        group = parallel_state.get_tensor_model_parallel_group()
        logits_BKV = gather_from_tensor_model_parallel_region(logits_BKV.contiguous(), group)
    return logits_BKV[..., :vocab_size].float().argmax(dim=-1)


def predict_answer_tokens(chunks: list, tokens_NS: torch.Tensor, num_positions: int,
                          vocab_size: int, micro_batch: int) -> torch.Tensor:
    """Greedy next-token predictions [N, num_positions] at positions S-1-num_positions..S-2
    (i.e. for tokens S-num_positions..S-1) of every sequence in `tokens_NS` [N, S].

    Collective over the whole model-parallel x DP world; every rank passes the same tokens and
    gets the same predictions (on the CPU)."""
    n, s = tokens_NS.shape
    ps = parallel_state
    device = state.device()
    cp, cp_rank = ps.get_context_parallel_world_size(), ps.get_context_parallel_rank()
    mine = _dp_share(tokens_NS, micro_batch, vpp=len(chunks) > 1)
    positions = torch.arange(s - 1 - num_positions, s - 1)
    local_pos = load_balanced_positions(s, cp, cp_rank) if cp > 1 else torch.arange(s)
    held = torch.isin(positions, local_pos)  # the answer positions this CP rank holds
    local_index = torch.nonzero(torch.isin(local_pos, positions)).flatten()
    pos_ids = torch.arange(s).unsqueeze(0).expand(micro_batch, -1)
    batches = [_Micro(slice_for_cp_rank(mine[i:i + micro_batch], 1, cp, cp_rank).to(device),
                      slice_for_cp_rank(pos_ids, 1, cp, cp_rank).to(device))
               for i in range(0, len(mine), micro_batch)]
    store = _forward_only(chunks, batches, s, micro_batch, local_index)
    preds = torch.full((len(mine), num_positions), -1, dtype=torch.long, device=device)
    if ps.is_pipeline_last_stage():
        # logits rows come in local (load-balanced) order; `held` is in global order
        order = torch.argsort(local_pos[local_index]).to(device)
        local = torch.cat([_argmax_over_vocab(x, vocab_size) for x in store])
        preds[:, held.to(device)] = local[:, order]
    return _combine(preds, n).cpu()


def _dp_share(tokens_NS: torch.Tensor, micro_batch: int, vpp: bool) -> torch.Tensor:
    """This DP rank's contiguous share of the sequences, padded (repeating the last sequence)
    so that every DP rank runs the same whole number of micro-batches (EP's all-to-all needs
    the same count everywhere; the interleaved schedule a multiple of pp)."""
    ps = parallel_state
    n = tokens_NS.shape[0]
    dp, dp_rank = ps.get_data_parallel_world_size(), ps.get_data_parallel_rank()
    group = micro_batch * (ps.get_pipeline_model_parallel_world_size() if vpp else 1)
    share = math.ceil(math.ceil(n / dp) / group) * group
    return tokens_NS[torch.arange(dp_rank * share, (dp_rank + 1) * share).clamp(max=n - 1)]


def _forward_only(chunks: list, batches: list[_Micro], seq_length: int, micro_batch: int,
                  local_index: torch.Tensor) -> list[torch.Tensor]:
    """megatron-core's schedule, forward only: logits [b, rows, V/tp] of the `local_index`
    rows per micro-batch on the last pipeline stage (nothing elsewhere)."""
    reset_moe_aux_scale()
    vpp = len(chunks) > 1
    with _evaluating(chunks), _logits_only_at(chunks, local_index):
        iters = [iter(batches) for _ in chunks]
        return get_forward_backward_func()(
            forward_step_func=_forward_step, data_iterator=iters if vpp else iters[0],
            model=chunks if vpp else chunks[0], num_microbatches=len(batches),
            seq_length=seq_length, micro_batch_size=micro_batch, forward_only=True,
            collect_non_loss_data=True)


def _combine(preds: torch.Tensor, n: int) -> torch.Tensor:
    """Assemble the per-rank predictions: CP (max over -1 fillers), PP (from the last stage),
    DP (gather the shares); every rank ends with the first `n` rows."""
    ps = parallel_state
    if ps.get_context_parallel_world_size() > 1:
        dist.all_reduce(preds, op=dist.ReduceOp.MAX, group=ps.get_context_parallel_group())
    if ps.get_pipeline_model_parallel_world_size() > 1:
        dist.broadcast(preds, src=ps.get_pipeline_model_parallel_last_rank(),
                       group=ps.get_pipeline_model_parallel_group())
    if ps.get_data_parallel_world_size() > 1:
        parts = [torch.empty_like(preds) for _ in range(ps.get_data_parallel_world_size())]
        dist.all_gather(parts, preds, group=ps.get_data_parallel_group())
        preds = torch.cat(parts)
    return preds[:n]


def score_samples(chunks: list, samples: list[NiahSample], vocab_size: int,
                  micro_batch: int) -> tuple[list[bool], torch.Tensor]:
    """(exact match per sample, predictions [N, max answer tokens]) for samples of one
    length. Predictions are aligned to the sequence end; -1 left of a shorter answer."""
    tokens = torch.from_numpy(np.stack([s.tokens for s in samples]))
    width = max(len(s.answer) for s in samples)
    preds = predict_answer_tokens(chunks, tokens, width, vocab_size, micro_batch)
    correct = [bool(np.array_equal(preds[i, width - len(s.answer):].numpy(), s.answer))
               for i, s in enumerate(samples)]
    for i, s in enumerate(samples):
        preds[i, :width - len(s.answer)] = -1
    return correct, preds


# ---- the run ------------------------------------------------------------------------------
def run_niah(trainer: Any, cfg: NiahConfig, out_dir: Path, name: str,
             where: str = "niah") -> NiahReport:
    """NIAH over cfg.lengths x cfg.depths on `trainer.model` (needs only `.model`, the DDP
    chunks, and `.cfg`, the RecipeConfig). Collective; every rank returns the same report;
    global rank 0 writes out_dir/niah/<name>.json and .png (all ranks wait for them).
    `where` names the config in errors (e.g. "curriculum.stages.s1.gate.niah")."""
    recipe = trainer.cfg
    validate_niah(cfg, recipe, where)
    micro = cfg.micro_batch_samples or recipe.train.micro_batch_samples
    stacks, tokenizer = load_haystacks(cfg, recipe.data, where)
    rank0 = ranks.is_rank0()
    correct: dict[tuple[int, float], list[bool]] = {}
    rows: list[dict] = []
    per_length = len(cfg.depths) * cfg.samples_per_cell
    bar = _progress(len(cfg.lengths) * per_length, rank0, name)
    for length in cfg.lengths:
        samples = make_samples(cfg, stacks, tokenizer, length, where)
        ok, preds = _score_in_chunks(trainer.model, samples, recipe.model.vocab_size, micro, bar)
        for s, hit, pred in zip(samples, ok, preds.tolist(), strict=True):
            correct.setdefault((length, s.depth), []).append(hit)
            rows.append(_sample_row(s, hit, [t for t in pred if t >= 0], tokenizer))
        bar.set_postfix_str(f"{length}: {sum(ok) / len(ok):.2f}")
    bar.close()
    report = _report(cfg, name, correct, rows)
    if rank0:
        write_report(report, Path(out_dir))
    ranks.barrier()
    return report


def _progress(total: int, show: bool, name: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=f"NIAH {name}", unit="sample", disable=not show)


def _score_in_chunks(chunks: list, samples: list[NiahSample], vocab_size: int, micro: int,
                     bar) -> tuple[list[bool], torch.Tensor]:
    """score_samples over slices of one forward-only schedule's worth (micro x DP [x PP under
    VPP]) each, ticking `bar` per sample; the same predictions as one call."""
    ps = parallel_state
    vpp = len(chunks) > 1
    step = micro * ps.get_data_parallel_world_size() * (
        ps.get_pipeline_model_parallel_world_size() if vpp else 1)
    ok: list[bool] = []
    preds: list[torch.Tensor] = []
    width = max(len(s.answer) for s in samples)
    for i in range(0, len(samples), step):
        part = samples[i:i + step]
        hits, p = score_samples(chunks, part, vocab_size, micro)
        pad = torch.full((len(part), width - p.shape[1]), -1, dtype=p.dtype)
        ok += hits
        preds.append(torch.cat([pad, p], dim=1))
        bar.update(len(part))
    return ok, torch.cat(preds)


def _sample_row(s: NiahSample, hit: bool, pred: list[int], tokenizer) -> dict:
    answer = s.answer.tolist()
    return {"length": s.length, "depth": s.depth, "index": s.index, "source": s.source,
            "key": s.key, "value": s.value, "needle_start": s.needle_start,
            "haystack_tokens": s.haystack_len, "answer_tokens": answer,
            "predicted_tokens": pred, "predicted": tokenizer.decode(pred), "correct": hit,
            "tokens_correct": sum(a == b for a, b in zip(answer, pred, strict=True))}


def _report(cfg: NiahConfig, name: str, correct: dict, rows: list[dict]) -> NiahReport:
    grid: dict[int, dict[float, float]] = {}
    for (length, depth), hits in correct.items():
        grid.setdefault(length, {})[depth] = sum(hits) / len(hits)
    cells = [acc for row in grid.values() for acc in row.values()]
    mean = sum(sum(h) for h in correct.values()) / sum(len(h) for h in correct.values())
    low = min(cells)
    passed = mean >= cfg.pass_accuracy and low >= cfg.min_cell_accuracy
    tokens = sum(r["tokens_correct"] for r in rows) / sum(len(r["answer_tokens"]) for r in rows)
    return NiahReport(passed=passed, mean_accuracy=mean, min_cell_accuracy=low, grid=grid,
                      name=name, token_accuracy=tokens, samples=rows, config=asdict(cfg))


def grid_lines(report: NiahReport, color: bool = False) -> list[str]:
    """The accuracy grid as text: a header of depths, one row per length; with `color`, each
    cell in ANSI green (>= the pass threshold), yellow or red (< the cell minimum or 0.5)."""
    d = report.to_dict()
    cfg = d["config"]

    def cell(a: float) -> str:
        text = f"{a:>6.2f}"
        if not color:
            return text
        code = 32 if a >= cfg["pass_accuracy"] else 31 if a < max(cfg["min_cell_accuracy"],
                                                                    0.5) else 33
        return f"\033[{code}m{text}\033[0m"

    head = "length  " + " ".join(f"{x:>6.0%}" for x in d["depths"])
    return [head, *(f"{n:>6}  " + " ".join(cell(a) for a in accs)
                    for n, accs in zip(d["lengths"], d["accuracy"], strict=True))]


def write_report(report: NiahReport, out_dir: Path) -> tuple[Path, Path]:
    """out_dir/niah/<name>.json and the length x depth heatmap <name>.png."""
    d = out_dir / "niah"
    d.mkdir(parents=True, exist_ok=True)
    data = report.to_dict()
    json_path, png_path = d / f"{report.name}.json", d / f"{report.name}.png"
    json_path.write_text(json.dumps(data, indent=1))
    heatmap(data, png_path)
    return json_path, png_path


def heatmap(data: dict, path: Path) -> None:
    """Accuracy per (length, depth) cell, red (0) to green (1), with the values written in."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    acc = np.array(data["accuracy"], dtype=float)
    fig, ax = plt.subplots(figsize=(1.2 + 0.9 * acc.shape[1], 1.2 + 0.6 * acc.shape[0]))
    ax.imshow(acc, cmap="RdYlGn", vmin=0.0, vmax=1.0, aspect="auto")
    ax.set_xticks(range(acc.shape[1]), [f"{d:.0%}" for d in data["depths"]])
    ax.set_yticks(range(acc.shape[0]), [str(n) for n in data["lengths"]])
    ax.set_xlabel("needle depth")
    ax.set_ylabel("context length (tokens)")
    for (i, j), v in np.ndenumerate(acc):
        ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=8)
    verdict = "pass" if data["passed"] else "fail"
    ax.set_title(f"NIAH {data['name']}: mean {data['mean_accuracy']:.3f} ({verdict})", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
