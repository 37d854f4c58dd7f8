"""5 training steps under TP2, EP2, PP2, PP2 x VPP2, CP2 (2 gloo processes) give the losses of
1 process on the same initial weights and data; gradient accumulation 4x1 equals 1x4.

Tolerances (fp32 everywhere). Layouts change the reduction order (TP all-reduce, PP p2p, EP
all-to-all, CP all-gather / reduce-scatter), so nothing is bitwise. Before any update (step 0)
the loss must agree to 1e-6 relative and the gradient norm (which sees every gradient of every
rank) to 1e-4 (measured: <= 1e-6; CP2 and TP2+SP <= 1.1e-8; PP2 x VPP2: identical dense, MoE
grad norm 2e-10). After updates, Adam normalises each element, so elements whose gradient is ~0
can flip sign with the reduction order and move by +-lr: later losses agree to 1e-4 relative
(measured CP2, TP2+SP: <= 3.4e-6). A missing gradient reduction (e.g. experts not summed over
ranks) shows as a step-0 grad-norm error of >1e-2 and loss errors of >2e-4 by step 2; so does a
router aux / z loss whose gradient megatron scales by the local token count under SP or CP
(1.5e-2 with the weights of `ROUTER_LOSSES`, see builder._moe_kwargs); swapped pipeline messages
(PP2 x VPP2 with megatron-core's batched p2p) as a step-0 loss error of 1.4e-4 and a grad-norm
error of 36%."""

from __future__ import annotations

import pytest

from exaone_train.parallel.testing import run_distributed

STEPS = 5
BASE = ["train.data_source=synthetic", "logging.wandb=false", f"train.train_steps={STEPS}",
        "train.seq_length_tokens=64", "train.global_batch_samples=4",
        "train.micro_batch_samples=1", "optim.clip_grad=0.0"]


def _train(run_dir: str, overrides: list[str], save_init: bool = False) -> list[float]:
    """Train; the single-process reference first saves its initial weights to
    run_dir/init so every layout starts from the same weights (loaded through
    dist_checkpointing, i.e. resharded to the layout)."""
    from exaone_train.checkpoint.model_state import save_model_state
    from exaone_train.config.load import load_recipe
    from exaone_train.parallel import state
    from exaone_train.train import trainer as T

    cfg = load_recipe("tiny_cpu", [f"run.dir={run_dir}", *BASE, *overrides])
    state.setup(cfg.parallel, cfg.seed)
    t = T.Trainer(cfg, T.prepare_run_dir(cfg))
    if save_init:
        save_model_state(t.model, f"{run_dir}/init")
    return [(r.loss, r.grad_norm) for r in t.fit()]


def _single(tmp_path, overrides: list[str]) -> list[float]:
    return run_distributed(_train, 1, str(tmp_path / "single"), overrides, True)[0]


_REFERENCES: dict[tuple, list[float]] = {}
_INIT_DIRS: dict[tuple, str] = {}


def reference_for(model: str, tmp_path, overrides: tuple[str, ...] = ()) -> list[float]:
    key = (model, overrides)
    if key not in _REFERENCES:
        _REFERENCES[key] = _single(tmp_path, [f"model={model}", *overrides])
        _INIT_DIRS[key] = str(tmp_path / "single" / "init")
    return _REFERENCES[key]


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    return reference_for("tiny_kexaone", tmp_path_factory.mktemp("ref"))


@pytest.mark.parametrize("model, layout", [
    ("tiny_exaone4", ["parallel.tp=2"]),  # dense EXAONE 4.0 (post-norms), TP without SP
    ("tiny_kexaone", ["parallel.tp=2", "parallel.sequence_parallel=true"]),
    ("tiny_kexaone", ["parallel.ep=2"]),
    ("tiny_kexaone", ["parallel.pp=2"]),
    ("tiny_kexaone", ["parallel.ep=2", "train.micro_batch_samples=2"]),  # DP2xEP2, 2 per micro
    # interleaved: 4 chunks of 1 layer; rank 0 holds layers 0 and 2, rank 1 layers 1 and 3
    # (+ MTP). On 2 ranks the previous and next stage are one peer (builder._pp_peers_coincide).
    ("tiny_exaone4", ["parallel.pp=2", "parallel.virtual_pp=2"]),
    ("tiny_kexaone", ["parallel.pp=2", "parallel.virtual_pp=2"]),
    # CP2: 64 tokens in 4 chunks of 16, sliding window 16 crossing chunk boundaries, document
    # masks (train.document_attention_mask defaults to true); MoE + MTP for K-EXAONE
    ("tiny_exaone4", ["parallel.cp=2"]),
    ("tiny_kexaone", ["parallel.cp=2"]),
], ids=["exaone4_tp2", "tp2_sp", "ep2", "pp2", "dp2_ep2_mb2", "exaone4_pp2_vpp2", "pp2_vpp2",
        "exaone4_cp2", "cp2"])
def test_layout_matches_single_process(tmp_path, model, layout):
    reference = reference_for(model, tmp_path / "ref")
    init = _INIT_DIRS[(model, ())]
    losses = run_distributed(_train, 2, str(tmp_path / "run"),
                             [f"model={model}", f"train.init_from={init}", *layout])
    ours = losses[-1]  # the last rank holds the (broadcast) loss; all ranks agree
    assert losses[0] == ours
    assert_same_run(reference, ours, str(layout))


def assert_same_run(reference, ours, what: str) -> None:
    (loss0, gn0), (loss0_b, gn0_b) = reference[0], ours[0]
    assert abs(loss0 - loss0_b) <= 1e-6 * loss0, f"step 0 loss: {loss0} vs {what} {loss0_b}"
    assert abs(gn0 - gn0_b) <= 1e-4 * gn0, f"step 0 grad norm: {gn0} vs {what} {gn0_b}"
    for step, ((a, _), (b, _)) in enumerate(zip(reference, ours, strict=True)):
        assert abs(a - b) <= 1e-4 * abs(a), f"step {step}: 1 proc {a} vs {what} {b}"


# Router aux and z losses weighted up until a wrong gradient scale shows in the step-0 grad
# norm; no document mask, so the sliding window alone decides which keys across CP chunk
# boundaries each query sees.
ROUTER_LOSSES = ("model.moe_seq_aux_loss_coeff=1.0", "model.moe_z_loss_coeff=0.01",
                 "train.document_attention_mask=false")


@pytest.mark.parametrize("layout", [["parallel.cp=2"],
                                    ["parallel.tp=2", "parallel.sequence_parallel=true"]],
                         ids=["cp2", "tp2_sp"])
def test_router_losses_and_window_mask_match_single_process(tmp_path, layout):
    reference = reference_for("tiny_kexaone", tmp_path / "ref", ROUTER_LOSSES)
    init = _INIT_DIRS[("tiny_kexaone", ROUTER_LOSSES)]
    losses = run_distributed(_train, 2, str(tmp_path / "run"),
                             ["model=tiny_kexaone", f"train.init_from={init}", *ROUTER_LOSSES,
                              *layout])
    assert_same_run(reference, losses[-1], str(layout))


def test_grad_accumulation_4x1_equals_1x4(tmp_path, reference):
    init = _INIT_DIRS[("tiny_kexaone", ())]
    one_by_four = _single(tmp_path, ["train.micro_batch_samples=4", f"train.init_from={init}"])
    assert_same_run(reference, one_by_four, "1x4")
