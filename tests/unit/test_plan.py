"""The dry-run plan: layout, per-GPU memory and time for K-EXAONE 236B on 64 H100 (the public
reference layout TP4 PP8 EP8), checked against numbers worked out by hand from MODELS.md, and
the layout errors a user must see before submitting a job."""

from __future__ import annotations

import json

import pytest

from exaone_train.errors import ConfigError
from exaone_train.model.counts import training_flops_per_token
from exaone_train.train.hardware import GPU_SPECS, peak_flops
from launcher.cli import main
from launcher.resource_plan import GIB, load_for_plan, make_plan

H, HEADS, KV, D, E, FE, V = 6144, 64, 8, 128, 128, 2048, 153600  # MODELS.md


@pytest.fixture(scope="module")
def kexaone():
    return load_for_plan("kexaone_236b", [])


@pytest.fixture(scope="module")
def plan64(kexaone):
    return make_plan(kexaone, 64, gpus_per_node=8, gpu_type="h100")


def test_layout_of_the_public_64_h100_run(plan64):
    par = plan64["parallel"]
    assert (par["tp"], par["pp"], par["ep"], par["cp"]) == (4, 8, 8, 1)
    assert par["dp"] == 2  # 64 / (4*8*1)
    assert par["expert_dp"] == 1  # 64 / (expert_tp 1 * ep 8 * pp 8)
    assert par["experts_per_ep_rank"] == 16
    assert plan64["pipeline"]["layers_per_stage"] == 6
    stages = plan64["pipeline"]["stages"]
    assert [s["layer_ranges"] for s in stages] == [[[6 * r, 6 * r + 6]] for r in range(8)]
    assert stages[0]["embedding"] and not stages[0]["lm_head"]
    assert stages[-1]["lm_head"] and stages[-1]["mtp"]
    assert plan64["world"] == {**plan64["world"], "nodes": 8, "world_size": 64}


def test_middle_stage_parameters_match_a_hand_count(plan64):
    attn = H * (HEADS * D + 2 * KV * D) + HEADS * D * H  # q, k, v, o
    swiglu = 3 * H * FE  # one expert (and the shared expert)
    per_layer_dense = (attn + swiglu) / 4 + H * E + 2 * H + 2 * D  # TP4 shards; router, norms not
    experts = E * swiglu / 8  # EP8
    assert plan64["pipeline"]["stages"][1]["params"] == int(6 * (per_layer_dense + experts))
    assert plan64["pipeline"]["stages"][1]["expert_params"] == 6 * experts


def test_static_memory_per_gpu_follows_the_bytes_per_parameter_formula(plan64):
    stage = plan64["pipeline"]["stages"][1]
    n, experts = stage["params"], stage["expert_params"]
    # Muon + distributed optimizer: bf16 param 2 + fp32 grad 4 on every parameter; master 4 +
    # momentum 4 sharded over expert-DP = 1 for experts and over DP = 2 for the rest (norms,
    # on AdamW, are a rounding error here).
    expected = (6 * n + 8 * experts + 8 * (n - experts) / 2) / GIB
    assert stage["static_gib"]["distributed"] == pytest.approx(expected, rel=1e-3)
    # ~3.9B params per GPU * ~13.8 bytes: about 49 GiB; far from 0 and from 80 GiB.
    assert 45 < stage["static_gib"]["distributed"] < 55
    # Without the distributed optimizer nothing is sharded: 14 bytes per parameter.
    assert stage["static_gib"]["replicated"] == pytest.approx(14 * n / GIB, rel=1e-3)


def test_adamw_costs_more_than_muon(kexaone):
    adam = make_plan(kexaone, 64, gpus_per_node=8, optimizer="adamw")
    stage = adam["pipeline"]["stages"][1]
    assert stage["static_gib"]["replicated"] == pytest.approx(18 * stage["params"] / GIB, rel=1e-3)
    assert adam["memory"]["optimizer"] == "adamw"


def test_activation_estimate_and_recompute(kexaone, plan64):
    selective = make_plan(load_for_plan("kexaone_236b", ["parallel.recompute=selective"]), 64,
                          gpus_per_node=8)
    act = selective["memory"]["activations"]
    # One MoE layer, s=8192, b=1, TP4+SP, bf16: X = 2*2h + 2(a+2g)d + ad + k(h+3fe) + 3fs.
    x = 2 * 2 * H + 2 * (HEADS + 2 * KV) * D + HEADS * D + 8 * (H + 3 * FE) + 3 * FE
    assert act["per_layer_per_microbatch_gib"] == pytest.approx(2 * 8192 * x / 4 / GIB)
    assert act["in_flight_microbatches_first_stage"] == 8  # 1F1B: PP micro-batches on rank 0
    full = plan64  # the recipe's recompute=full
    assert full["memory"]["activations"]["peak_gib"] < act["peak_gib"] / 2
    assert "formula" in act and "recompute=full" in act["formula"]


def test_virtual_pipeline_stages(kexaone):
    cfg = load_for_plan("kexaone_236b", ["parallel.virtual_pp=2"])
    plan = make_plan(cfg, 64, gpus_per_node=8)
    assert plan["pipeline"]["layers_per_virtual_stage"] == 3
    assert plan["pipeline"]["stages"][0]["layer_ranges"] == [[0, 3], [24, 27]]
    # Interleaving holds PP*(1 + (PP-1)/(PP*VPP)) = 8 * (1 + 7/16) stages' worth on rank 0.
    assert plan["memory"]["activations"]["in_flight_microbatches_first_stage"] == 11.5


def test_step_time_from_flops_per_token(kexaone, plan64):
    c, b = plan64["compute"], plan64["batch"]
    assert c["training_flops_per_token"] == training_flops_per_token(kexaone.model, 8192)
    assert c["peak_flops_per_gpu"] == 989e12
    expected = c["training_flops_per_token"] * b["tokens_per_step"] / (64 * 989e12 * 0.4)
    assert c["step_time_s"] == pytest.approx(expected)
    assert b["global_batch_samples"] % (2 * 1) == 0


def test_world_size_not_divisible_by_tp_pp_cp(kexaone):
    with pytest.raises(ConfigError, match=r"world_size=48.*tp\*pp\*cp = 4\*8\*1 = 32"):
        make_plan(kexaone, 48, gpus_per_node=8)


def test_expert_layout_must_fit_in_dp_cp_tp(kexaone):
    cfg = load_for_plan("kexaone_236b", ["parallel.ep=16"])
    with pytest.raises(ConfigError, match=r"parallel.ep=16.*must divide DP\*CP\*TP = 2\*1\*4 = 8"):
        make_plan(cfg, 64, gpus_per_node=8)
    assert make_plan(cfg, 128, gpus_per_node=8)["parallel"]["expert_dp"] == 1  # DP=4: fits


def test_moe_with_tp_needs_sequence_parallel():
    # validate() refuses it before any plan is made
    with pytest.raises(ConfigError, match="parallel.sequence_parallel"):
        make_plan(load_for_plan("kexaone_236b", ["parallel.sequence_parallel=false"]), 64,
                  gpus_per_node=8)


def test_global_batch_must_split_over_dp(kexaone):
    with pytest.raises(ConfigError, match="global_batch_samples=1023"):
        make_plan(kexaone, 64, gpus_per_node=8, global_batch_samples=1023)


def test_peak_flops_table():
    assert peak_flops("h100") == peak_flops("h200") == 989e12
    assert peak_flops("h100", fp8=True) == 1979e12
    assert peak_flops("b200") == 2250e12 and peak_flops("b200", fp8=True) == 4500e12
    assert peak_flops("a100") == 312e12
    with pytest.raises(ConfigError):
        peak_flops("a100", fp8=True)
    with pytest.raises(ConfigError):
        peak_flops("v100")
    assert set(GPU_SPECS) == {"h100", "h200", "a100", "b200"}


def test_plan_cli_json_and_errors(capsys):
    assert main(["plan", "--recipe", "kexaone_236b", "--nodes", "8", "--json"]) == 0
    plan = json.loads(capsys.readouterr().out)
    assert plan["parallel"]["dp"] == 2
    assert main(["plan", "--recipe", "kexaone_236b", "--nodes", "6"]) == 2
    assert "world_size=48" in capsys.readouterr().err
    assert main(["plan", "--gpus-per-node", "2", "parallel.tp=2"]) == 2  # tiny MoE, TP2, no SP
    assert "sequence_parallel" in capsys.readouterr().err


def test_plan_counts_the_optimizer_the_recipe_trains_with():
    """`optim=adamw_wsd` plans AdamW's 8 bytes of state per parameter, as `--optimizer adamw`
    does (the plan used to look for a field named name/optimizer/type and plan Muon)."""
    by_recipe = make_plan(load_for_plan("exaone4_32b", ["optim=adamw_wsd"]), 8,
                          global_batch_samples=16)
    by_flag = make_plan(load_for_plan("exaone4_32b", []), 8, global_batch_samples=16,
                        optimizer="adamw")
    muon = make_plan(load_for_plan("exaone4_32b", []), 8, global_batch_samples=16)
    assert by_recipe["memory"]["optimizer"] == "adamw" and muon["memory"]["optimizer"] == "muon"
    assert by_recipe["memory"]["total_per_gpu_gib"] == by_flag["memory"]["total_per_gpu_gib"]
    # AdamW - Muon = 4 more bytes on every Muon-updated (2-D hidden) parameter
    stage = muon["pipeline"]["stages"][0]
    extra = by_recipe["memory"]["static_per_gpu_gib"]["replicated"] - \
        muon["memory"]["static_per_gpu_gib"]["replicated"]
    assert 0 < extra * GIB < 4 * stage["params"]


# --- the local (blockwise) attention: what the plan counts (issues 13 and 17) ---------------

def _local(*overrides: str):
    """kexaone_236b on the local blockwise attention (bf16, no Transformer Engine), no
    recompute: the configuration whose attention memory the plan must follow."""
    return load_for_plan("kexaone_236b", ["precision=bf16", "precision.transformer_impl=local",
                                          "parallel.recompute=none", *overrides])


SLIDING_MOE, GLOBAL_MOE = 1, 3  # kexaone layers 1 and 3: MoE, sliding window 128 | global


def test_local_attention_memory_is_linear_in_sequence_length():
    """The blockwise path holds no [s, s] scores: doubling s doubles every layer's bytes, and a
    layer holds X plus the fp32 output and log-sum-exp (4*a*(d+1)/TP per token). The old
    formula's 2*e*a*s^2/TP scores made this ratio ~2x larger at 32K."""
    from launcher.resource_plan import layer_activation_bytes

    cfg = _local()
    short, long = (layer_activation_bytes(cfg, s, 1) for s in (16384, 32768))
    for i in (SLIDING_MOE, GLOBAL_MOE):
        assert long[i] == pytest.approx(2 * short[i], rel=1e-12)
    x = 2 * 2 * H + 2 * (HEADS + 2 * KV) * D + HEADS * D + 8 * (H + 3 * FE) + 3 * FE
    per_token = 2 * x / 4 + 4 * HEADS / 4 * (D + 1)
    assert short[SLIDING_MOE] == pytest.approx(16384 * per_token, rel=1e-12)
    assert short[GLOBAL_MOE] == short[SLIDING_MOE]  # CP 1: both hold their own K/V only


def test_context_parallel_memory_by_layer_type():
    """Under CP4 at 32K a sliding-window layer keeps the halo-extended K/V of its two chunks
    (s/CP + 2*127 positions), a global layer the all-gathered K/V of all s positions."""
    from launcher.resource_plan import layer_activation_bytes

    s, cp = 32768, 4
    per = layer_activation_bytes(_local(f"parallel.cp={cp}"), s, 1)
    kv_per_position = 2 * 2 * KV / 4 * D  # bf16 K and V of the 2 KV heads on a TP4 rank
    assert per[GLOBAL_MOE] - per[SLIDING_MOE] == pytest.approx(
        kv_per_position * (s - (s / cp + 2 * 127)), rel=1e-12)
    no_cp = layer_activation_bytes(_local(), s, 1)
    assert per[SLIDING_MOE] == pytest.approx(
        no_cp[SLIDING_MOE] / cp + kv_per_position * (s / cp + 2 * 127), rel=1e-12)
    # selective recompute (core_attn) drops the attention's kept tensors, K/V included
    sel = layer_activation_bytes(_local(f"parallel.cp={cp}", "parallel.recompute=selective"), s, 1)
    assert sel[SLIDING_MOE] == sel[GLOBAL_MOE] < per[SLIDING_MOE]


def test_a_window_longer_than_a_chunk_all_gathers_and_warns():
    from launcher.resource_plan import cp_exchange, layer_activation_bytes

    cfg = _local("parallel.cp=2")
    assert cp_exchange(cfg, 256)[:4] == ["all_gather"] * 4  # chunk 64 < 127 halo keys
    assert cp_exchange(cfg, 512)[:4] == ["halo", "halo", "halo", "all_gather"]  # chunk 128
    per = layer_activation_bytes(cfg, 256, 1)
    assert per[SLIDING_MOE] == per[GLOBAL_MOE]
    plan = make_plan(cfg, 128, gpus_per_node=8, seq_len_tokens=256)
    assert any("all-gather K/V instead of the halo" in w for w in plan["warnings"])


def test_transformer_engine_attention_keeps_the_flash_accounting(kexaone):
    """kexaone_236b (FP8, Transformer Engine): no local-attention terms, every layer type
    alike, and under CP its sliding-window layers are planned as all-gathers (warned)."""
    from launcher.resource_plan import cp_exchange, layer_activation_bytes

    cfg = load_for_plan("kexaone_236b", ["parallel.recompute=none", "parallel.cp=2"])
    per = layer_activation_bytes(cfg, 32768, 1)
    x = 2 * 2 * H + 2 * (HEADS + 2 * KV) * D + HEADS * D + 8 * (H + 3 * FE) + 3 * FE
    assert per[SLIDING_MOE] == per[GLOBAL_MOE] == pytest.approx(2 * 16384 * x / 4, rel=1e-12)
    assert set(cp_exchange(cfg, 32768)) == {"all_gather"}


def test_the_plans_halo_rule_is_the_attentions():
    """`plan.cp_exchange` restates `parallel.halo.halo_fits` (which imports torch, and the plan
    must not): both agree on when a sliding-window layer exchanges a halo."""
    import dataclasses

    from exaone_train.parallel.halo import halo_fits
    from launcher.resource_plan import cp_exchange

    base = _local()
    for cp in (2, 4, 8):
        cfg = dataclasses.replace(base, parallel=dataclasses.replace(base.parallel, cp=cp))
        for seq in (2 * cp, 252 * cp, 254 * cp, 256 * cp, 1024 * cp):  # a chunk of 127 at 254
            assert (cp_exchange(cfg, seq)[0] == "halo") == halo_fits(seq // cp, 127), (cp, seq)
