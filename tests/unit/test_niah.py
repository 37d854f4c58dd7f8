"""NIAH on one process: the samples are deterministic, exactly as long as asked, with the needle
at the requested depth; teacher-forced exact match agrees with a plain greedy generation loop;
run_niah leaves the model as it found it; the CLI gates on the result."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from exaone_train.config.load import load_recipe
from exaone_train.errors import ConfigError
from exaone_train.eval.niah import _gpt, run_niah, score_samples, validate_niah
from exaone_train.eval.niah_config import NiahConfig
from exaone_train.eval.niah_samples import load_haystacks, make_samples
from exaone_train.parallel import state

BASE = ["logging.wandb=false", "train.data_source=synthetic", "train.seq_length_tokens=256"]
GRID = NiahConfig(lengths=[128, 256], depths=[0.0, 0.3, 0.5, 1.0], samples_per_cell=2)


@pytest.fixture(autouse=True)
def _teardown():
    yield
    state.teardown()


@pytest.fixture(scope="module")
def recipe():
    return load_recipe("tiny_cpu", BASE)


def test_samples_deterministic_exact_length_needle_at_depth(recipe):
    stacks, tok = load_haystacks(GRID, recipe.data)
    again, _ = load_haystacks(GRID, recipe.data)
    longest_sentence = max(len(s) for st in stacks for s in st.sentences)
    keys = set()
    for length in GRID.lengths:
        samples = make_samples(GRID, stacks, tok, length)
        assert len(samples) == len(GRID.depths) * GRID.samples_per_cell
        for s, t in zip(samples, make_samples(GRID, again, tok, length), strict=True):
            assert np.array_equal(s.tokens, t.tokens) and (s.key, s.value) == (t.key, t.value)
        for s in samples:
            assert len(s.tokens) == length
            needle = tok.encode(" " + GRID.needle_template.format(key=s.key, value=s.value)).ids
            assert s.tokens[s.needle_start:s.needle_start + s.needle_len].tolist() == needle
            # the needle sits at a sentence boundary within one sentence of the depth
            assert abs(s.needle_start - s.depth * s.haystack_len) <= longest_sentence
            assert tok.decode(s.answer.tolist()) == " " + s.value
            # question + answer tokenize as the joined text
            tail = GRID.question_template.format(key=s.key) + GRID.answer_template.format(
                value=s.value)
            q_start = s.needle_len + s.haystack_len
            assert s.tokens[q_start:].tolist() == tok.encode(tail).ids
            keys.add(s.key)
        assert all(s.needle_start == 0 for s in samples if s.depth == 0.0)
        assert all(s.needle_start == s.haystack_len for s in samples if s.depth == 1.0)
    assert len(keys) == 2 * len(GRID.depths) * GRID.samples_per_cell  # every needle its own
    # no needle key occurs in the training corpus (the retrieval data has keys of this shape)
    corpus = "".join(p.read_text() for p in Path("data/corpus").glob("*.jsonl"))
    assert not any(k in corpus for k in keys)
    # nor the generated retrieval practice (dense needles, recall drill): their own streams
    from data_pipeline.synth import retrieval

    practice = "".join(r["text"] for r in retrieval.recall_drill(1234, 300, (6, 11)))
    practice += "".join(r["text"] for r in retrieval.generate_dense(
        1234, 12, 240, (3, 6), (3, 6), "data/tokenizer/tokenizer.json"))
    assert practice.count("-") > 3000 and not any(k in practice for k in keys)
    other = make_samples(dataclasses.replace(GRID, seed=1), stacks, tok, 128)
    assert {s.key for s in other}.isdisjoint(keys)


def test_niah_config_errors_name_the_field(recipe):
    with pytest.raises(ConfigError, match=r"niah.lengths.*train.seq_length_tokens=256"):
        validate_niah(NiahConfig(lengths=[512]), recipe)
    with pytest.raises(ConfigError, match=r"gate.niah.depths"):
        validate_niah(NiahConfig(depths=[1.5]), recipe, "gate.niah")
    cp2 = dataclasses.replace(recipe, parallel=dataclasses.replace(recipe.parallel, cp=2))
    with pytest.raises(ConfigError, match=r"niah.lengths.*2\*parallel.cp=4"):
        validate_niah(NiahConfig(lengths=[254]), cp2)
    stacks, tok = load_haystacks(GRID, recipe.data)
    with pytest.raises(ConfigError, match=r"niah.lengths=40: too short"):
        make_samples(GRID, stacks, tok, 40)


def _model(recipe):
    from exaone_train.train.trainer import build_model_chunks

    state.setup(recipe.parallel, recipe.seed)
    return build_model_chunks(recipe)


def _greedy(model, prompt: np.ndarray, steps: int, vocab: int) -> list[int]:
    """A plain generation loop: full forward of the prefix, argmax, append."""
    from exaone_train.export.forward import lm_logits

    ids = torch.from_numpy(prompt).unsqueeze(0)
    out: list[int] = []
    for _ in range(steps):
        nxt = int(lm_logits(model, ids)[0, -1, :vocab].argmax())
        out.append(nxt)
        ids = torch.cat([ids, torch.tensor([[nxt]])], dim=1)
    return out


def test_teacher_forced_exact_match_equals_greedy_generation(recipe):
    chunks = _model(recipe)
    model, vocab = _gpt(chunks[0]), recipe.model.vocab_size
    model.eval()
    stacks, tok = load_haystacks(GRID, recipe.data)
    samples = make_samples(GRID, stacks, tok, 128)[::3]  # 3 samples, other depths
    greedy = [_greedy(model, s.tokens[:s.answer_start], len(s.answer), vocab) for s in samples]
    # the model's own greedy continuation as the answer must score correct; the same with its
    # last token changed must not
    own = [dataclasses.replace(s, tokens=np.concatenate([s.tokens[:s.answer_start], g]))
           for s, g in zip(samples, greedy, strict=True)]
    wrong = [dataclasses.replace(s, tokens=s.tokens.copy()) for s in own]
    for s in wrong:
        s.tokens[-1] = (s.tokens[-1] + 1) % vocab
    model.train()
    ok, preds = score_samples(chunks, samples + own + wrong, vocab, micro_batch=2)
    n = len(samples)
    assert ok[n:2 * n] == [True] * n and ok[2 * n:] == [False] * n
    assert ok[:n] == [g == s.answer.tolist() for s, g in zip(samples, greedy, strict=True)]
    assert ok[:n] == [False] * n  # an untrained model does not find needles
    for i, (s, g) in enumerate(zip(samples, greedy, strict=True)):
        row = preds[n + i, preds.shape[1] - len(s.answer):].tolist()
        assert row == g  # teacher-forced on its own continuation = the generation
        assert preds[i, preds.shape[1] - len(s.answer)] == g[0]  # first token: same prompt


def _snapshot(chunks) -> dict:
    snap = {}
    for i, c in enumerate(chunks):
        for name, p in c.named_parameters():
            snap[f"{i}.{name}"] = p.detach().clone()
            if getattr(p, "main_grad", None) is not None:
                snap[f"{i}.{name}.main_grad"] = p.main_grad.detach().clone()
        for name, b in c.named_buffers():
            snap[f"{i}.buffer.{name}"] = b.detach().clone()
    return snap


def test_run_niah_leaves_weights_grads_mode_untouched(tmp_path):
    from exaone_train.train import trainer as T

    cfg = load_recipe("tiny_cpu", [f"run.dir={tmp_path}/run", *BASE, "train.train_steps=2"])
    state.setup(cfg.parallel, cfg.seed)
    t = T.Trainer(cfg, T.prepare_run_dir(cfg))
    t.train_one_step()  # grads in the DDP buffers, expert-bias counts, optimizer state
    before, rng = _snapshot(t.model), torch.get_rng_state()
    modes = [m.training for c in t.model for m in c.modules()]
    grid = NiahConfig(lengths=[128], depths=[0.0, 1.0], samples_per_cell=2)
    report = run_niah(t, grid, tmp_path, "stage1")
    after = _snapshot(t.model)
    assert before.keys() == after.keys()
    for k in before:
        assert torch.equal(before[k], after[k]), f"{k} changed"
    assert [m.training for c in t.model for m in c.modules()] == modes and all(modes)
    assert torch.equal(rng, torch.get_rng_state())
    assert _gpt(t.model[0]).mtp_process and t.model[0].config.mtp_num_layers == 1
    assert not report.passed and report.mean_accuracy == 0.0 and report.min_cell_accuracy == 0.0
    data = json.loads((tmp_path / "niah" / "stage1.json").read_text())
    assert data["lengths"] == [128] and data["depths"] == [0.0, 1.0]
    assert data["accuracy"] == [[0.0, 0.0]] and len(data["samples"]) == 4
    right = sum(r["tokens_correct"] for r in data["samples"])
    assert data["token_accuracy"] == report.token_accuracy == right / sum(
        len(r["answer_tokens"]) for r in data["samples"]) < 0.5
    assert (tmp_path / "niah" / "stage1.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    result = t.train_one_step()  # training goes on (MTP back in place)
    assert not result.skipped and "mtp_loss" in t.metrics


def test_cli_exit_code_gates_on_the_result(tmp_path, capsys):
    from exaone_train.checkpoint.model_state import save_model_state
    from launcher.cli import main

    recipe = load_recipe("tiny_cpu", BASE)
    save_model_state(_model(recipe), tmp_path / "init")
    state.teardown()
    args = ["niah", "tiny_cpu", *BASE, f"train.init_from={tmp_path}/init",
            f"run.dir={tmp_path}/run", "eval.niah.lengths=[128]", "eval.niah.depths=[0.5]",
            "eval.niah.samples_per_cell=2"]
    assert main(args) == 1  # an untrained model fails the default gate
    out = capsys.readouterr().out
    assert "128" in out and "FAIL" in out
    assert main([*args, "eval.niah.pass_accuracy=0.0", "--name", "lenient"]) == 0
    assert json.loads((tmp_path / "run" / "niah" / "lenient.json").read_text())["passed"]
    assert main(["niah", "tiny_cpu", *BASE, f"run.dir={tmp_path}/empty"]) == 2  # no weights
