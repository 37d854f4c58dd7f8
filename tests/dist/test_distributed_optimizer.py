"""The distributed optimizer (`parallel.distributed_optimizer=true`, `optim.layer_wise`): each DP
rank owns whole parameters, keeps Muon/AdamW state (and bf16 fp32 master weights) only for
those, and all-gathers the updated parameters.

Runs (tiny K-EXAONE, 5 steps, clip_grad=1.0; the norms are 1.02-1.22, so every step clips): one
2-process spawn runs every DP2 variant in turn, one 1-process spawn the references, to keep the
test short (40-70 s on 2 shared cores).

Tolerances and why:
- DP2 distributed vs DP2 replicated (same layout): each parameter's update is the same
  computation on the same all-reduced grads, only on one rank instead of both. The one
  difference is the grad norm's float64 sum order (owners' partial sums, then all-reduce):
  measured 2e-16 relative, which leaves the clip factor unchanged once rounded to fp32 (a
  2e-16 change crosses an fp32 rounding boundary with probability ~1e-8). So losses and final
  weights are asserted bitwise equal (fp32 and bf16); the norm to 1e-12 relative.
- DP2 distributed vs 1 process: tests/dist/test_trainer_layouts.py's tolerances (the DP
  all-reduce changes the grad sum order): step-0 loss 1e-6, step-0 grad norm 1e-4, later
  losses 1e-4 relative (measured: loss 0 at steps 1-2, 1.0e-6 by step 5; norm 6.7e-12).
- Checkpoints: same layout and setting -> the resumed losses equal the straight run's
  exactly; replicated DP2 -> distributed DP2 is the same layout, also exact; distributed DP2
  -> 1 process: tests/dist/test_checkpoint_reshard.py's 1e-5 (first resumed step) and 1e-4.
"""

from __future__ import annotations

import hashlib
import math

import pytest

from exaone_train.parallel.testing import run_distributed

SAVE_AT, STEPS = 3, 5
BASE = ["train.data_source=synthetic", "logging.wandb=false", f"train.train_steps={STEPS}",
        "train.seq_length_tokens=64", "train.global_batch_samples=4",
        "train.micro_batch_samples=1", "optim.clip_grad=1.0", "checkpoint.save_final=false",
        "checkpoint.interval_steps=0"]
DIST = "parallel.distributed_optimizer=true"
CKPT = f"checkpoint.interval_steps={SAVE_AT}"


def _trainer(run_dir: str, overrides: list[str]):
    from exaone_train.config.load import load_recipe
    from exaone_train.parallel import state
    from exaone_train.train import trainer as T

    cfg = load_recipe("tiny_cpu", [f"run.dir={run_dir}", *BASE, *overrides])
    state.setup(cfg.parallel, cfg.seed)
    return T.Trainer(cfg, T.prepare_run_dir(cfg))


def _digest(t, experts: bool) -> str:
    """sha256 of this rank's weights (dense only, or routed experts only), in name order."""
    h = hashlib.sha256()
    for chunk in t.model:
        for name, p in chunk.named_parameters():
            if (".experts." in name) == experts:
                h.update(p.detach().float().numpy().tobytes())
    return h.hexdigest()


def _state_numel(t) -> dict[str, int]:
    """Elements this rank holds for the optimizer: state tensors (Muon momentum, AdamW
    moments) and fp32 master copies of bf16 weights, split dense / routed-expert."""
    from exaone_train.checkpoint.optimizer_state import param_pairs

    inner = t.optimizer.optimizer
    expert = {id(p) for g in inner.param_groups if g.get("expert") for p in g["params"]}
    out = {"dense": 0, "expert": 0, "master": 0}
    for model_p, main_p in param_pairs(t.optimizer):
        kind = "expert" if id(main_p) in expert else "dense"
        out[kind] += sum(v.numel() for k, v in inner.state[main_p].items() if k != "step")
        if main_p is not model_p:
            out["master"] += main_p.numel()
    return out


def _run(root: str, name: str, overrides: list[str]) -> dict:
    t = _trainer(f"{root}/{name}", overrides)
    first = t.step + 1
    results = t.fit()
    return {"losses": {first + i: r.loss for i, r in enumerate(results)},
            "norms": [r.grad_norm for r in results], "state": _state_numel(t),
            "dense": _digest(t, False), "experts": _digest(t, True)}


def _skip_paths(root: str) -> dict:
    """The stability guard's two skips under the distributed optimizer: a non-finite grad of a
    parameter only rank 1 owns (rank 0 must see it through the norm), then a loss-guard skip;
    neither may change any weight; then a normal step."""
    import torch

    from exaone_train.train import step as S

    t = _trainer(f"{root}/skip", [DIST])
    t.train_one_step()
    seq, mb = t.cfg.train.seq_length_tokens, t.cfg.train.micro_batch_samples
    _, owned_by_rank = t.optimizer.owned[0]  # dense parameters, per DP rank
    poisoned = owned_by_rank[1][0]
    original = S.forward_backward

    def with_nan_grad(*args, **kwargs):
        out = original(*args, **kwargs)
        poisoned.main_grad.view(-1)[0] = float("nan")  # as DDP would leave it on every rank
        return out

    before = _digest(t, False)
    S.forward_backward = with_nan_grad
    try:
        nan = S.train_step(t.model, t.optimizer, t.next_batches(), seq, mb, lambda loss: None)
    finally:
        S.forward_backward = original
    after_nan = _digest(t, False)
    guard = S.train_step(t.model, t.optimizer, t.next_batches(), seq, mb, lambda loss: "spike")
    after_guard = _digest(t, False)
    ok = S.train_step(t.model, t.optimizer, t.next_batches(), seq, mb, lambda loss: None)
    return {"nan": (nan.skipped, nan.skip_reason, math.isnan(nan.grad_norm)),
            "guard": (guard.skipped, guard.grad_norm), "ok": ok.skipped,
            "unchanged": before == after_nan == after_guard,
            "dense": _digest(t, False), "rank_owned": [len(ps) for ps in owned_by_rank],
            "finite_after": all(torch.isfinite(p).all().item() for c in t.model
                                for p in c.parameters())}


def _gather_buckets() -> list[list[float]]:
    """allgather_owned with uneven parts, two dtypes and 3-element buckets (several rounds,
    some ranks empty in a round): every rank ends with every owner's values."""
    import torch
    import torch.distributed as dist

    from exaone_train.optim.layer_wise import allgather_owned

    rank = dist.get_rank()
    shapes = [[(2, 2), (1,), (5,)], [(3,), (1, 1)]]  # rank 0 owns 3 tensors, rank 1 owns 2
    params = [[torch.full(s, -1.0, dtype=torch.float32 if i % 2 else torch.bfloat16)
               for i, s in enumerate(owned)] for owned in shapes]
    for i, p in enumerate(params[rank]):
        p.fill_(10 * rank + i)
    allgather_owned(params, dist.group.WORLD, bucket_numel=3)
    return [p.float().flatten().tolist() for owned in params for p in owned]


def _dp2_runs(root: str) -> dict:
    """Every 2-process run, in one spawn (a trainer is cheap; a spawn costs ~10 s)."""
    from exaone_train.checkpoint.model_state import save_model_state

    init = f"{root}/init"
    t = _trainer(f"{root}/init_run", [])
    save_model_state(t.model, init)
    ckpt = f"{root}/{{}}/checkpoints/iter_{SAVE_AT:07d}"
    runs = {
        "dp2": [f"train.init_from={init}", CKPT],
        "dp2_dist": [f"train.init_from={init}", CKPT, DIST],
        "dp2_dist_resume": [DIST, f"checkpoint.load_from={ckpt.format('dp2_dist')}"],
        "dp2_dist_from_replicated": [DIST, f"checkpoint.load_from={ckpt.format('dp2')}"],
        "ep2": [f"train.init_from={init}", "parallel.ep=2"],
        "ep2_dist": [f"train.init_from={init}", "parallel.ep=2", DIST],
        "bf16": ["precision=bf16", CKPT],
        "bf16_dist": ["precision=bf16", CKPT, DIST],
        "bf16_dist_resume": ["precision=bf16", DIST,
                             f"checkpoint.load_from={ckpt.format('bf16_dist')}"],
    }
    out = {name: _run(root, name, overrides) for name, overrides in runs.items()}
    out["skip"] = _skip_paths(root)
    out["gather"] = _gather_buckets()
    return out


def _one_process_runs(root: str) -> dict:
    ckpt = f"{root}/dp2_dist/checkpoints/iter_{SAVE_AT:07d}"
    return {"single": _run(root, "single", [f"train.init_from={root}/init"]),
            "single_from_dist": _run(root, "single_from_dist", [f"checkpoint.load_from={ckpt}"])}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("distopt"))
    two = run_distributed(_dp2_runs, 2, root)
    one = run_distributed(_one_process_runs, 1, root)[0]
    return {"rank0": two[0], "rank1": two[1], **one, "root": root}


def _both(runs, name: str) -> tuple[dict, dict]:
    return runs["rank0"][name], runs["rank1"][name]


@pytest.mark.parametrize("layout", ["dp2", "ep2", "bf16"])
def test_distributed_equals_replicated_bitwise(runs, layout):
    """DP2 (dense and expert groups both 2), DP2 x EP2 (expert-DP 1: experts stay whole per
    rank, dense sharded), and bf16 (fp32 masters only on owners): same losses and weights."""
    for rank in ("rank0", "rank1"):
        rep, dist = runs[rank][layout], runs[rank][f"{layout}_dist"]
        assert rep["losses"] == dist["losses"], layout
        for a, b in zip(rep["norms"], dist["norms"], strict=True):
            assert abs(a - b) <= 1e-12 * a, (layout, a, b)
        assert (rep["dense"], rep["experts"]) == (dist["dense"], dist["experts"]), layout
    r0, r1 = _both(runs, f"{layout}_dist")
    assert r0["dense"] == r1["dense"]  # every rank has every owner's update
    assert r0["losses"] == r1["losses"]


def test_distributed_dp2_matches_one_process(runs):
    from tests.dist.test_trainer_layouts import assert_same_run

    single = runs["single"]
    ours = runs["rank1"]["dp2_dist"]
    as_pairs = [(single["losses"][s], n) for s, n in zip(sorted(single["losses"]),
                                                          single["norms"], strict=True)]
    assert_same_run(as_pairs, [(ours["losses"][s], n) for s, n in
                               zip(sorted(ours["losses"]), ours["norms"], strict=True)],
                    "DP2 distributed optimizer")


@pytest.mark.parametrize("layout, sharded", [("dp2", ("dense", "expert")), ("ep2", ("dense",)),
                                             ("bf16", ("dense", "expert", "master"))])
def test_state_is_sharded_over_dp(runs, layout, sharded):
    """Each parameter's state (and master copy) exists on exactly one DP rank: the ranks'
    counts add up to the replicated count, each about half. Under EP2 the expert-DP group is 1:
    each rank keeps all of its own experts' state."""
    rep = runs["rank0"][layout]["state"]
    counts = [runs[r][f"{layout}_dist"]["state"] for r in ("rank0", "rank1")]
    for kind in sharded:
        assert counts[0][kind] + counts[1][kind] == rep[kind], (kind, counts, rep)
        assert 0.4 * rep[kind] <= counts[0][kind] <= 0.6 * rep[kind], (kind, counts, rep)
    if layout == "ep2":
        for r, c in zip(("rank0", "rank1"), counts, strict=True):
            assert c["expert"] == runs[r]["ep2"]["state"]["expert"] > 0
    total = sum(rep.values())
    assert max(sum(c.values()) for c in counts) <= 0.6 * total


@pytest.mark.parametrize("name, reference", [
    ("dp2_dist_resume", "dp2_dist"),  # distributed -> distributed, DP2
    ("dp2_dist_from_replicated", "dp2"),  # distributed_optimizer=false -> true, DP2
    ("bf16_dist_resume", "bf16_dist"),  # bf16: fp32 masters saved by their owners
])
def test_resume_exact(runs, name, reference):
    ours, ref = runs["rank1"][name]["losses"], runs["rank1"][reference]["losses"]
    assert sorted(ours) == list(range(SAVE_AT + 1, STEPS + 1))
    assert ours == {s: ref[s] for s in ours}


def test_distributed_checkpoint_holds_every_state_tensor_once(runs):
    """The distributed checkpoint has the replicated one's keys and global shapes (every
    parameter's state present, written by its owner; dist_checkpointing refuses overlaps)."""
    from megatron.core import dist_checkpointing

    def keys(name: str) -> dict:
        path = f"{runs['root']}/{name}/checkpoints/iter_{SAVE_AT:07d}/model"
        return {k: tuple(v.global_shape)
                for k, v in dist_checkpointing.load_tensors_metadata(path).items()}

    dist_keys, rep_keys = keys("dp2_dist"), keys("dp2")
    assert dist_keys == rep_keys
    assert sum(k.startswith("optimizer.state.momentum_buffer.") for k in dist_keys) > 10
    bf16_keys = keys("bf16_dist")
    assert bf16_keys == keys("bf16")  # fp32 master weights too, each from its owner
    assert sum(k.startswith("optimizer.state.fp32_param.") for k in bf16_keys) > 10


def test_gather_in_uneven_buckets(runs):
    expected = [[0.0] * 4, [1.0], [2.0] * 5, [10.0] * 3, [11.0]]
    assert runs["rank0"]["gather"] == runs["rank1"]["gather"] == expected


def test_distributed_checkpoint_resumes_on_one_process(runs):
    ours, ref = runs["single_from_dist"]["losses"], runs["rank1"]["dp2_dist"]["losses"]
    assert sorted(ours) == list(range(SAVE_AT + 1, STEPS + 1))
    first = SAVE_AT + 1
    assert abs(ours[first] - ref[first]) <= 1e-5 * ref[first]
    for s in range(first + 1, STEPS + 1):
        assert abs(ours[s] - ref[s]) <= 1e-4 * ref[s], (s, ours[s], ref[s])


def test_skips_leave_every_rank_consistent(runs):
    r0, r1 = _both(runs, "skip")
    assert min(r0["rank_owned"]) > 0
    for r in (r0, r1):
        assert r["nan"] == (True, "non-finite gradient", True)
        assert r["guard"] == (True, None)
        assert r["unchanged"] and r["ok"] is False and r["finite_after"]
    assert r0["dense"] == r1["dense"]
