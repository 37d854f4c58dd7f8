"""`exaone-train data build|merge|generate|train-tokenizer|inspect`."""

from __future__ import annotations

import argparse
import json

from launcher.args import add_recipe_arguments


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("data", help="corpus generation, tokenizer training, shard builds")
    dsub = p.add_subparsers(dest="data_command", required=True)

    b = dsub.add_parser("build", help="tokenize a data recipe's sources into .bin/.idx shards")
    add_recipe_arguments(b, "shipped_corpus", "data recipe in recipes/data/ or a YAML path")
    b.add_argument("--worker", default=None, metavar="I/N",
                   help="build only worker I's share of N (e.g. a Slurm array task: "
                   "slurm/data_build.sh) into a partial manifest; then `data merge`")
    b.set_defaults(func=run_build)

    m = dsub.add_parser("merge", help="check and join the partial manifests of a --worker build")
    add_recipe_arguments(m, "shipped_corpus", "data recipe in recipes/data/ or a YAML path")
    m.set_defaults(func=run_merge)

    g = dsub.add_parser("generate", help="regenerate the shipped corpus (byte-identical per seed)")
    g.add_argument("--out", default="data/corpus", help="output directory (default data/corpus)")
    g.add_argument("--seed", type=int, default=1234, help="generator seed (default 1234)")
    g.set_defaults(func=run_generate)

    t = dsub.add_parser("train-tokenizer", help="train a BPE (or SuperBPE) tokenizer")
    t.add_argument("--corpus", nargs="+", default=None, help="jsonl files (default data/corpus/*)")
    t.add_argument("--out", default="data/tokenizer",
                   help="output directory (default data/tokenizer)")
    t.add_argument("--vocab-size", type=int, default=4096, help="vocabulary size (default 4096)")
    t.add_argument("--superbpe", action="store_true", help="second pass with superword merges")
    t.add_argument("--superbpe-transition", type=float, default=0.8,
                   help="fraction of the vocabulary learnt before superword merges (default 0.8)")
    for name, default in (("pad-id", 0), ("bos-id", 1), ("eos-id", 2)):
        t.add_argument(f"--{name}", type=int, default=default,
                       help=f"id of the {name[:3]} token (default {default})")
    t.set_defaults(func=run_train_tokenizer)

    i = dsub.add_parser("inspect", help="a stage's blend, packing and first samples")
    add_recipe_arguments(i, "shipped_corpus", "data recipe in recipes/data/ or a YAML path")
    i.add_argument("--stage", default="pretrain", help="stage of the recipe (default pretrain)")
    i.add_argument("--samples", type=int, default=2, help="samples to print (default 2)")
    i.set_defaults(func=run_inspect)


def _print_manifest(manifest: dict, path: str) -> None:
    for name, src in manifest["sources"].items():
        state = "up to date" if src["skipped"] else "built"
        print(f"{name:>12}: {src['documents']:>8,} docs {src['tokens']:>12,} tokens "
              f"{src['bad_records']:>5} bad  ({state})")
    t = manifest["totals"]
    print(f"{'total':>12}: {t['documents']:>8,} docs {t['tokens']:>12,} tokens; languages: "
          + ", ".join(f"{k}={v['tokens']:,}" for k, v in t["languages"].items()))
    decon: dict = manifest.get("decontamination") or {}
    for name, ev in decon.get("eval_sets", {}).items():
        verb = "removed" if decon["action"] == "drop" else "marked"
        print(f"{'eval ' + name:>12}: {ev['documents_' + verb]:>8,} docs {verb} "
              f"({decon['ngram']}-gram overlap)")
    print(f"manifest: {path}")


def run_build(args: argparse.Namespace) -> int:
    from data_pipeline.build import MANIFEST, build, partial_name
    from data_pipeline.recipe import load_data_recipe
    from data_pipeline.split import parse_worker

    worker = parse_worker(args.worker) if args.worker else None
    recipe = load_data_recipe(args.recipe, args.overrides)
    manifest = build(recipe.build, worker)
    name = partial_name(*worker) if worker else MANIFEST
    _print_manifest(manifest, f"{recipe.build.output_dir}/{name}")
    if worker:
        print(f"worker {worker[0]}/{worker[1]} done; when all are: exaone-train data merge "
              f"{args.recipe}")
    return 0


def run_merge(args: argparse.Namespace) -> int:
    from data_pipeline.build import MANIFEST
    from data_pipeline.merge import merge
    from data_pipeline.recipe import load_data_recipe

    recipe = load_data_recipe(args.recipe, args.overrides)
    manifest = merge(recipe.build)
    print(f"merged {manifest['workers']['count']} partial manifests")
    _print_manifest(manifest, f"{recipe.build.output_dir}/{MANIFEST}")
    return 0


def run_generate(args: argparse.Namespace) -> int:
    from data_pipeline.config import resolve_path
    from data_pipeline.synth import generate_corpus

    for name, sha in generate_corpus(resolve_path(args.out), args.seed).items():
        print(f"{name:>18}  sha256 {sha}")
    return 0


def run_train_tokenizer(args: argparse.Namespace) -> int:
    import glob

    from data_pipeline.config import resolve_path
    from data_pipeline.tokenizer import TokenizerTrainConfig, train_tokenizer

    corpus = args.corpus or sorted(glob.glob(str(resolve_path("data/corpus") / "*.jsonl")))
    cfg = TokenizerTrainConfig(vocab_size=args.vocab_size, pad_id=args.pad_id,
                               bos_id=args.bos_id, eos_id=args.eos_id, superbpe=args.superbpe,
                               superbpe_transition=args.superbpe_transition)
    print(json.dumps(train_tokenizer(corpus, resolve_path(args.out), cfg), indent=2))
    return 0


def run_inspect(args: argparse.Namespace) -> int:
    from data_pipeline import build_stage_dataset
    from data_pipeline.recipe import load_data_recipe
    from exaone_train.errors import ConfigError

    recipe = load_data_recipe(args.recipe, args.overrides)
    if args.stage not in recipe.stages:
        raise ConfigError("--stage", args.stage, f"not in {sorted(recipe.stages)}")
    ds = build_stage_dataset(recipe.stages[args.stage], seed=recipe.seed)
    print(json.dumps({"num_samples": ds.num_samples, "components": ds.report()}, indent=2))
    for i in range(args.samples):
        s = ds[i]
        print(f"sample {i} [{s.source}] docs={int(s.document_ids.max()) + 1} "
              f"loss_tokens={int(s.loss_mask.sum())} tokens[:16]={s.tokens[:16].tolist()}")
    return 0
