"""`parallel: {auto: true}`: the layout search against an exhaustive enumeration of the same
rules (no pruning, no early stop), the fixed fields of a stage, and the ConfigError of a world
where nothing fits (the smallest world it names is checked by searching it and the one below)."""

from __future__ import annotations

import dataclasses
import itertools
import statistics

import pytest

from exaone_train.config.validate import validate_backend, validate_batching, validate_parallel
from exaone_train.curriculum.stages import stage_recipe
from exaone_train.errors import ConfigError
from launcher.layout_search import (
    _NODE_COUNTS,
    Budget,
    resolve_stage_layouts,
    search_layout,
    step_time_estimate,
)
from launcher.resource_plan import check_layout, load_for_plan, make_plan


def _exhaustive(recipe, budget):
    """(step time, memory, layout) of every layout that passes the rules, fitting or not."""
    m, t = recipe.model, recipe.train
    out = []
    for tp, pp, cp, vpp, ep, etp, rc, dist_opt in itertools.product(
            [1, 2, 4], [1, 2, 4], [1, 2, 4], [None, 2], [1, 2, 4, 8], [1, 2, 4],
            ["none", "selective", "full"], [False, True]):
        p = dataclasses.replace(recipe.parallel, tp=tp, pp=pp, cp=cp, virtual_pp=vpp, ep=ep,
                                expert_tp=etp, recompute=rc, distributed_optimizer=dist_opt,
                                sequence_parallel=tp > 1)
        r = dataclasses.replace(recipe, parallel=p)
        try:
            validate_parallel(p, m)
            check_layout(p, m, budget.world_size, t.seq_length_tokens)
            validate_batching(t.global_batch_samples, t.micro_batch_samples,
                              budget.world_size // (tp * pp * cp), p)
            validate_backend(r)
        except ConfigError:
            continue
        plan = make_plan(r, budget.world_size, gpus_per_node=budget.gpus_per_node,
                         gpu_type=budget.gpu_type)
        est = step_time_estimate(r, plan, budget)
        out.append((est["step_time_s"], plan["memory"]["total_per_gpu_gib"], p))
    return out


def test_search_equals_the_fastest_fitting_layout_of_an_exhaustive_enumeration():
    cfg = load_for_plan("smoke_curriculum", ["curriculum.stages.1.global_batch_samples=8"])
    recipe = stage_recipe(cfg, cfg.curriculum.stages[1])
    free = Budget(world_size=4, gpus_per_node=4, gpu_type="h100", memory_gib=1e6)
    every = _exhaustive(recipe, free)
    # a budget that about half the layouts fit: memory now decides against faster layouts
    budget = dataclasses.replace(free, memory_gib=statistics.median(x[1] for x in every) / 0.9)
    fitting = [x for x in every if x[1] < budget.memory_gib * 0.9]
    assert 0 < len(fitting) < len(every)
    best_time, best_mem, best = min(fitting, key=lambda x: (x[0], x[1]))
    assert min(x[0] for x in every) < best_time  # a faster layout was refused for memory
    found = search_layout(recipe, budget)
    assert found is not None
    assert found["step_time_s"] == pytest.approx(best_time, rel=1e-12)
    assert found["memory_gib"] == pytest.approx(best_mem, rel=1e-12)
    assert found["parallel"] == best
    assert search_layout(recipe, free)["step_time_s"] == pytest.approx(min(x[0] for x in every))


def test_fields_set_beside_auto_are_kept():
    cfg = load_for_plan("smoke_curriculum", ["curriculum.stages.1.parallel.cp=2"])
    choices: dict = {}
    resolved = resolve_stage_layouts(cfg, 2, gpus_per_node=2, gpu_type="h100", choices=choices)
    long = resolved.curriculum.stages[1].parallel
    assert not long.auto and long.cp == 2 and long.tp == 1  # CP2 on 2 GPUs leaves TP1 PP1
    assert choices["long"]["parallel"]["cp"] == 2
    assert resolved.curriculum.stages[0] == cfg.curriculum.stages[0]  # not auto: untouched


def test_no_layout_fits_names_the_smallest_world_that_does():
    cfg = load_for_plan("kexaone_236b", [])
    with pytest.raises(ConfigError) as e:
        resolve_stage_layouts(cfg, 8, gpus_per_node=8, gpu_type="h100")
    assert e.value.field == "curriculum.stages.3.parallel"  # ctx_32k: the first auto stage
    words = e.value.rule
    assert "stage 'ctx_32k'" in words and "on 8 GPUs" in words
    import re

    world, nodes = map(int, re.search(r"smallest world that fits is (\d+) GPUs \((\d+) nodes",
                                      words).groups())
    assert world == 8 * nodes
    recipe = stage_recipe(cfg, cfg.curriculum.stages[3])
    budget = Budget(8 * nodes, 8, "h100", 80)
    assert search_layout(recipe, budget) is not None
    below = _NODE_COUNTS[_NODE_COUNTS.index(nodes) - 1]
    assert search_layout(recipe, budget.with_world(8 * below)) is None


def test_context_parallel_traffic_per_layer_type():
    """Bytes a CP rank sends per layer and micro-batch: the local attention's sliding-window
    layers send two W-1 halos of K/V forward and their gradients back; global layers (and
    every layer on Transformer Engine) all-gather K/V and reduce-scatter dK/dV, (CP-1)/CP of
    the whole sequence each; recompute re-runs the forward's exchange."""
    from launcher.layout_search import cp_bytes_per_layer, recompute_time_factor

    s, cp, halo = 32768, 4, 127
    kv = 2 * 8 / 4 * 128 * 2  # bytes per position: bf16 K and V of 2 KV heads (TP4)
    local = load_for_plan("kexaone_236b", [
        "precision=bf16", "precision.transformer_impl=local", "parallel.recompute=none",
        f"parallel.cp={cp}", f"train.seq_length_tokens={s}"])
    per = cp_bytes_per_layer(local)
    assert per[:4] == pytest.approx([kv * 2 * halo * 2] * 3 + [kv * s * (cp - 1) / cp * 2])
    assert per[0] / per[3] < 0.02  # the halo is ~1% of the all-gather at 32K CP4
    selective = cp_bytes_per_layer(dataclasses.replace(
        local, parallel=dataclasses.replace(local.parallel, recompute="selective")))
    assert selective == pytest.approx([1.5 * x for x in per])
    te = load_for_plan("kexaone_236b", ["parallel.recompute=none", f"parallel.cp={cp}",
                                        f"train.seq_length_tokens={s}"])
    assert cp_bytes_per_layer(te) == pytest.approx([per[3]] * 48)
    # selective recompute re-runs the core attention forward: dearer than none, cheaper than full
    te_selective = dataclasses.replace(
        te, parallel=dataclasses.replace(te.parallel, recompute="selective"))
    assert recompute_time_factor(te) == 1 < recompute_time_factor(te_selective) < 4 / 3
