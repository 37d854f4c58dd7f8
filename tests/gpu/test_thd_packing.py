"""GPU only (a lent GPU with Transformer Engine): document masks on the TE path as packed THD
batches (exaone_train/train/packing.py). Skipped where there is no GPU or no Transformer
Engine: TE's fused attention and its THD kernels exist only on CUDA. Not yet run (no GPU was
lent when this was written); what CPU can check is in tests/unit/test_context_parallel_layout.py
(cu_seqlens and the THD CP partition against the local path's document masks).

- our torch port of the THD CP partition equals TE's `thd_get_partitioned_indices`;
- a training step on the TE spec with THD packs gives the local path's loss (document masks
  built by LocalCoreAttention from the same document ids) on the same weights and data: bf16,
  step-0 loss within 1% (different attention kernels; a document boundary ignored, i.e.
  attention across documents, moves this tiny model's step-0 loss by more);
- with 2 GPUs, CP2 on the TE path (THD partitioned per document, cp_comm_type all_gather and
  a2a, the sliding-window-capable ones) gives the 1-GPU THD losses.
"""

from __future__ import annotations

import pytest
import torch

from exaone_train.parallel import state

pytestmark = pytest.mark.gpu


@pytest.fixture(autouse=True)
def _needs_gpu_and_te():
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    pytest.importorskip("transformer_engine")
    yield
    state.teardown()


@pytest.mark.parametrize("cp", [2, 4])
def test_thd_partition_port_equals_transformer_engine(cp):
    import transformer_engine_torch as tex

    from exaone_train.parallel.context import thd_partitioned_indices

    gen = torch.Generator().manual_seed(cp)
    lengths = torch.randint(1, 40, (9,), generator=gen) * 2 * cp
    cu = torch.zeros(10, dtype=torch.int32)
    cu[1:] = torch.cumsum(lengths, 0)
    for r in range(cp):
        theirs = tex.thd_get_partitioned_indices(cu.cuda(), int(cu[-1]), cp, r)
        assert thd_partitioned_indices(cu, int(cu[-1]), cp, r).tolist() == theirs.tolist()


BASE = ["train.data_source=synthetic", "logging.wandb=false", "train.train_steps=2",
        "train.seq_length_tokens=256", "train.global_batch_samples=4",
        "train.micro_batch_samples=2", "optim.clip_grad=0.0", "precision=bf16",
        "train.document_attention_mask=true"]


def _train(run_dir: str, overrides: list[str], save_init: bool = False) -> list:
    from exaone_train.checkpoint.model_state import save_model_state
    from exaone_train.config.load import load_recipe
    from exaone_train.train import trainer as T

    cfg = load_recipe("tiny_cpu", [f"run.dir={run_dir}", *BASE, *overrides])
    state.setup(cfg.parallel, cfg.seed)
    t = T.Trainer(cfg, T.prepare_run_dir(cfg))
    if save_init:
        save_model_state(t.model, f"{run_dir}/init")
    return [r.loss for r in t.fit()]


def test_te_thd_step_matches_local_document_masks(tmp_path):
    from exaone_train.parallel.testing import run_distributed

    local = run_distributed(_train, 1, str(tmp_path / "local"),
                            ["precision.transformer_impl=local"], True, gpus=True)[0]
    te = run_distributed(_train, 1, str(tmp_path / "te"),
                         ["precision.transformer_impl=transformer_engine",
                          f"train.init_from={tmp_path}/local/init"], gpus=True)[0]
    assert abs(te[0] - local[0]) <= 0.01 * local[0], (te, local)


@pytest.mark.parametrize("comm", ["all_gather", "a2a"])
def test_te_thd_cp2_matches_one_gpu(tmp_path, comm):
    from exaone_train.parallel.testing import run_distributed

    if torch.cuda.device_count() < 2:
        pytest.skip("needs 2 GPUs")
    te = ["precision.transformer_impl=transformer_engine"]
    one = run_distributed(_train, 1, str(tmp_path / "one"), te, True, gpus=True)[0]
    cp2 = run_distributed(_train, 2, str(tmp_path / "cp2"),
                          [*te, "parallel.cp=2", f"parallel.cp_comm_type={comm}",
                           f"train.init_from={tmp_path}/one/init"], gpus=True)[-1]
    assert abs(cp2[0] - one[0]) <= 1e-2 * one[0], (cp2, one)
