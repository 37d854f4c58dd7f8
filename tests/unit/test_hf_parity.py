"""Numerical parity with the independent `transformers` implementations: tiny random HF models
(K-EXAONE = ExaoneMoeForCausalLM, EXAONE 4.0 = Exaone4ForCausalLM, both layouts), imported
through our converter, give the same logits on our megatron-core model (fp32, eager attention).

Tolerance: max |logits_ours - logits_hf| <= 1e-4 (measured: 0 for Exaone4, ~6e-7 for
ExaoneMoe). Sequences (24 tokens) are longer than the window (4 tokens).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from exaone_train.config.schema import ModelConfig, ParallelConfig, PrecisionConfig
from exaone_train.export import tiny
from exaone_train.export.convert import (
    export_hf_state_dict,
    load_hf_state_dict,
    model_config_for_hf,
)
from exaone_train.export.forward import lm_logits
from exaone_train.export.hf_io import read_hf_config, read_hf_tensors
from exaone_train.model.builder import build_model
from exaone_train.parallel import state

ATOL = 1e-4
SEQ = 24


@pytest.fixture(scope="module", autouse=True)
def single_process():
    state.setup(ParallelConfig(), seed=0)
    yield
    state.teardown()


def _hf_config(case: str):
    if case == "kexaone_mtp":
        return tiny.kexaone_config()
    if case == "kexaone_mixed_mlp":  # explicit mlp_layer_types, not a dense prefix
        return tiny.kexaone_config(mlp_layer_types=["dense", "sparse", "dense", "sparse", "sparse"])
    if case == "kexaone_no_shared":  # issue 18: zero-size shared_experts tensors on disk
        return tiny.kexaone_no_shared_expert_config()
    if case == "kexaone_no_dense":  # first_k_dense_replace=0: every layer is MoE
        return tiny.kexaone_config(first_k_dense_replace=0)
    if case == "exaone4_32b":
        return tiny.exaone4_config("32b")
    return tiny.exaone4_config("1.2b")


def _import(hf_model, tmp_path, with_mtp: bool = False):
    """save_pretrained -> our converter -> (ModelConfig, our model, HF tensors on disk)."""
    tiny.save_hf_model(hf_model, tmp_path, with_mtp=with_mtp)
    tensors = read_hf_tensors(tmp_path)
    m = model_config_for_hf(read_hf_config(tmp_path), list(tensors), name="tiny")
    model = build_model(m, ParallelConfig(), PrecisionConfig(dtype="fp32")).eval()
    load_hf_state_dict(model, tensors, m)
    return m, model, tensors


def _ids(vocab: int, batch: int = 2, seq: int = SEQ) -> torch.Tensor:
    return torch.randint(0, vocab, (batch, seq), generator=torch.Generator().manual_seed(7))


@pytest.mark.parametrize("case", ["kexaone_mtp", "kexaone_mixed_mlp", "kexaone_no_shared",
                                  "kexaone_no_dense", "exaone4_32b", "exaone4_1p2b"])
def test_logits_match_transformers(case, tmp_path):
    hf = tiny.build_hf_model(_hf_config(case))
    m, model, _ = _import(hf, tmp_path, with_mtp=case == "kexaone_mtp")
    ids = _ids(m.vocab_size)
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
    ours = lm_logits(model, ids)
    assert ours.shape[-1] >= m.vocab_size
    diff = (ours[..., : m.vocab_size] - ref).abs().max().item()
    assert diff <= ATOL, f"{case}: max |logits diff| = {diff}"
    assert ref.abs().max().item() > 0.1  # the comparison is not between two near-zero tensors


def test_import_covers_the_hf_layouts(tmp_path):
    """The tiny configs exercise what the brief asks: explicit layer_types (5 layers, LLLG),
    padded vocab, MoE with random router and nonzero expert bias, MTP, tied 1.2B layout."""
    hf = tiny.build_hf_model(tiny.kexaone_config())
    m, model, tensors = _import(hf, tmp_path, with_mtp=True)
    assert m.layer_types == ["sliding_attention"] * 3 + ["full_attention", "sliding_attention"]
    assert m.mtp_num_layers == 1 and m.num_experts == 8
    padded = model.state_dict()["embedding.word_embeddings.weight"]
    assert padded.shape[0] == 384 and m.vocab_size == 300
    assert torch.all(padded[300:] == 0)
    bias = model.state_dict()["decoder.layers.1.mlp.router.expert_bias"]
    assert torch.equal(bias, tensors["model.layers.1.mlp.e_score_correction_bias"])
    assert bias.abs().min() > 0
    # the bias changes which experts are picked, so the parity test really checks its mapping
    ids = _ids(m.vocab_size)
    with torch.no_grad():
        with_bias = hf(input_ids=ids).logits
        for layer in hf.model.layers[1:]:
            layer.mlp.gate.e_score_correction_bias.zero_()
        assert (hf(input_ids=ids).logits - with_bias).abs().max() > 1e-3


@pytest.mark.parametrize("case", ["kexaone_mtp", "kexaone_no_shared", "exaone4_32b",
                                  "exaone4_1p2b"])
def test_export_round_trip_is_identical(case, tmp_path):
    hf = tiny.build_hf_model(_hf_config(case))
    m, model, tensors = _import(hf, tmp_path, with_mtp=case == "kexaone_mtp")
    back = export_hf_state_dict(model, m)
    assert sorted(back) == sorted(tensors)
    for key, t in tensors.items():
        assert torch.equal(back[key], t), key


def test_sliding_window_changes_logits(tmp_path):
    """Same weights, window 4 vs a window longer than the sequence: positions inside the
    window agree, later ones differ, and only the window-4 model matches HF (window 4)."""
    hf = tiny.build_hf_model(tiny.exaone4_config("32b"))
    m, model, tensors = _import(hf, tmp_path)
    wide = dataclasses.replace(m, sliding_window_tokens=SEQ * 2)
    wide_model = build_model(wide, ParallelConfig(), PrecisionConfig(dtype="fp32")).eval()
    load_hf_state_dict(wide_model, tensors, wide)
    ids = _ids(m.vocab_size)
    narrow_logits, wide_logits = lm_logits(model, ids), lm_logits(wide_model, ids)
    w = m.sliding_window_tokens
    assert torch.allclose(narrow_logits[:, :w], wide_logits[:, :w], atol=1e-6)
    assert (narrow_logits[:, w:] - wide_logits[:, w:]).abs().max() > 1e-2
    with torch.no_grad():
        ref = hf(input_ids=ids).logits
    assert (wide_logits[..., : m.vocab_size] - ref).abs().max() > 1e-2


def _hf_mtp_reference(hf, m: ModelConfig, tensors, ids: torch.Tensor,
                      padded_vocab: int) -> torch.Tensor:
    """MTP loss from transformers' own modules, written the way vLLM's exaone_moe_mtp.py runs
    the public block: fc(cat[norm_e(embed(x_{t+1})), norm_h(h_t)]) -> one dense full-attention
    ExaoneMoe decoder layer -> norm -> shared lm_head, predicting x_{t+2}."""
    from transformers.models.exaone_moe.modeling_exaone_moe import (
        ExaoneMoeDecoderLayer,
        ExaoneMoeRMSNorm,
    )

    cfg = hf.config
    cfg.mlp_layer_types = list(cfg.mlp_layer_types) + ["dense"]
    cfg.layer_types = list(cfg.layer_types) + ["full_attention"]
    layer = ExaoneMoeDecoderLayer(cfg, layer_idx=m.num_layers).eval()
    prefix = "mtp.layers.0."
    layer.load_state_dict({k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)})
    norms = {n: ExaoneMoeRMSNorm(m.hidden_size, eps=m.norm_eps) for n in
             ("pre_fc_norm_embedding", "pre_fc_norm_hidden", "norm")}
    for n, mod in norms.items():
        mod.weight.data.copy_(tensors[f"mtp.{n}.weight"])
    with torch.no_grad():
        h = hf.model(input_ids=ids).last_hidden_state
        next_ids = torch.roll(ids, -1, dims=1)
        next_ids[:, -1] = 0  # megatron's roll fills with 0; that position is masked anyway
        e = hf.model.embed_tokens(next_ids)
        x = torch.cat([norms["pre_fc_norm_embedding"](e), norms["pre_fc_norm_hidden"](h)], -1)
        x = x @ tensors["mtp.fc.weight"].T
        s = ids.shape[1]
        causal = torch.full((s, s), float("-inf")).triu(1)[None, None]
        dummy_rope = (torch.ones(1, s, m.head_dim), torch.zeros(1, s, m.head_dim))  # NoPE layer
        x = layer(x, attention_mask=causal, position_embeddings=dummy_rope)
        logits = hf.lm_head(norms["norm"](x))
    # megatron's loss runs over the padded vocab: pad rows are zero weights -> logit 0
    logits = torch.nn.functional.pad(logits, (0, padded_vocab - m.vocab_size))
    # position t predicts x_{t+2}; the last two positions have no target
    return torch.nn.functional.cross_entropy(logits[:, :-2].reshape(-1, padded_vocab),
                                             ids[:, 2:].reshape(-1))


def test_mtp_loss_matches_public_layout(tmp_path):
    """megatron-core's MTP loss (read from its logging tracker) equals the reference built
    from transformers modules in the public K-EXAONE MTP layout: checks the mtp.* mapping and
    the [embedding, hidden] order of eh_proj / mtp.fc."""
    from megatron.core.transformer.multi_token_prediction import MTPLossLoggingHelper

    hf = tiny.build_hf_model(tiny.kexaone_config())
    m, model, tensors = _import(hf, tmp_path, with_mtp=True)
    ids = _ids(m.vocab_size)
    b, s = ids.shape
    labels = torch.roll(ids, -1, dims=1)
    loss_mask = torch.ones_like(ids)
    loss_mask[:, -1] = 0  # the main head's last position has no next token
    MTPLossLoggingHelper.tracker.clear()
    model.train()  # the tracker is written in training mode only (dropout is 0)
    with torch.no_grad():
        model(ids, torch.arange(s).expand(b, -1), None, labels=labels, loss_mask=loss_mask)
    ours = MTPLossLoggingHelper.tracker["values"][0].item()
    MTPLossLoggingHelper.tracker.clear()
    padded_vocab = model.state_dict()["output_layer.weight"].shape[0]
    ref = _hf_mtp_reference(hf, m, tensors, ids, padded_vocab).item()
    print(f"MTP loss ours={ours:.7f} reference={ref:.7f}")
    assert abs(ours - ref) <= 1e-4 * max(1.0, abs(ref)), (ours, ref)


def test_no_shared_expert_is_imported_as_none(tmp_path):
    """num_shared_experts=0 maps to no shared expert (not a zero-width one), and only the
    zero-size tensors transformers writes are accepted in its place."""
    from safetensors.torch import load_file, save_file

    from exaone_train.errors import CheckpointError

    hf = tiny.build_hf_model(tiny.kexaone_no_shared_expert_config())
    m, model, tensors = _import(hf, tmp_path)
    assert m.moe_shared_expert_ffn_hidden_size is None
    assert not any("shared_experts" in k for k in model.state_dict())
    assert tensors["model.layers.1.mlp.shared_experts.down_proj.weight"].shape == (64, 0)
    path = tmp_path / "model.safetensors"
    on_disk = load_file(path)
    on_disk["model.layers.1.mlp.shared_experts.up_proj.weight"] = torch.zeros(24, 64)
    save_file(on_disk, path)
    with pytest.raises(CheckpointError, match="shared_experts.up_proj.weight.*expected"):
        load_hf_state_dict(model, read_hf_tensors(tmp_path), m)
