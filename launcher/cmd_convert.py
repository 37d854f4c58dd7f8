"""`exaone-train convert from-hf HF_DIR OUT_DIR` and `exaone-train convert to-hf CKPT_DIR OUT_DIR`.

from-hf: a Hugging Face ExaoneMoe (K-EXAONE) or Exaone4 directory -> our model checkpoint
(`model/` dist_checkpointing + `config.yaml`), loadable under any TP/PP/EP layout.
to-hf: our model checkpoint -> config.json + model.safetensors (or shards + index) that
`transformers` loads (ExaoneMoeForCausalLM / Exaone4ForCausalLM; MTP tensors under `mtp.*`).
Both stream a tensor at a time: host memory holds a few tensors, not the model.
"""

from __future__ import annotations

import argparse
import sys


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("convert", help="convert between Hugging Face and our checkpoints")
    csub = p.add_subparsers(dest="convert_command", required=True)
    from_hf = csub.add_parser("from-hf", help="HF model directory -> model checkpoint")
    from_hf.add_argument("hf_dir", help="Hugging Face model directory (config.json + safetensors)")
    from_hf.add_argument("out_dir", help="new model checkpoint directory (config.yaml + model/)")
    from_hf.add_argument("--dtype", default="fp32", choices=["fp32", "bf16"],
                         help="parameter dtype of the saved checkpoint (default fp32)")
    from_hf.set_defaults(func=run_from_hf)
    to_hf = csub.add_parser("to-hf", help="model checkpoint -> HF model directory")
    to_hf.add_argument("ckpt_dir", help="model or training checkpoint (config.yaml + model/)")
    to_hf.add_argument("out_dir", help="new Hugging Face model directory")
    to_hf.add_argument("--max-shard-gib", type=float, default=5.0,
                       help="safetensors shard size limit in GiB (default 5, as transformers)")
    to_hf.set_defaults(func=run_to_hf)


def run_from_hf(args: argparse.Namespace) -> int:
    from exaone_train.config.schema import PrecisionConfig
    from exaone_train.export.convert import convert_from_hf
    from exaone_train.parallel import state

    try:
        cfg = convert_from_hf(args.hf_dir, args.out_dir, PrecisionConfig(dtype=args.dtype),
                              show_progress=sys.stderr.isatty())
    finally:
        state.teardown()
    m = cfg.model
    print(f"converted {args.hf_dir} -> {args.out_dir}: {m.family}, {m.num_layers} layers, "
          f"vocab {m.vocab_size}, experts {m.num_experts}, mtp {m.mtp_num_layers}")
    return 0


def run_to_hf(args: argparse.Namespace) -> int:
    from exaone_train.export.convert import convert_to_hf
    from exaone_train.parallel import state

    try:
        out = convert_to_hf(args.ckpt_dir, args.out_dir,
                            max_shard_bytes=int(args.max_shard_gib * 2**30),
                            show_progress=sys.stderr.isatty())
    finally:
        state.teardown()
    print(f"wrote Hugging Face model to {out}")
    return 0
