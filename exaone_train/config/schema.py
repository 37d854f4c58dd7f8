"""Typed schema of a recipe. Hydra composes YAML over these dataclasses (struct mode: an unknown
key is an error); `validate()` then checks cross-field rules once, before anything starts.

Sections later issues add (eval, ...) hang off `RecipeConfig` the same way. `curriculum`
(exaone_train/curriculum/config.py) is read by `exaone-train curriculum` only; `exaone-train
train` runs the `train:` section as one stage and ignores it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from omegaconf import MISSING

from data_pipeline.config import DataRecipeConfig
from exaone_train.curriculum.config import CurriculumConfig
from exaone_train.eval.niah_config import NiahConfig
from exaone_train.optim.config import OptimConfig


@dataclass
class ModelConfig:
    """Architecture. Names follow MODELS.md; HF names in comments where they differ."""

    name: str = MISSING
    family: str = MISSING  # "kexaone" (ExaoneMoe) | "exaone4" (Exaone4)
    num_layers: int = MISSING
    hidden_size: int = MISSING
    num_attention_heads: int = MISSING
    num_query_groups: int = MISSING  # KV heads (GQA)
    head_dim: int = MISSING
    ffn_hidden_size: int = MISSING  # dense SwiGLU intermediate size
    vocab_size: int = MISSING  # tokenizer vocab; padded for TP by `padded_vocab_size`
    vocab_pad_multiple: int = 128
    max_position_embeddings: int = 8192
    rope_theta: float = 1_000_000.0
    norm_eps: float = 1e-5
    # Attention layout. `attention_pattern` repeats over the layers: L = sliding window,
    # G = global. An explicit `layer_types` list ("sliding_attention"/"full_attention", one per
    # layer, as in HF configs) wins over the pattern.
    attention_pattern: str = "G"
    layer_types: list[str] | None = None
    sliding_window_tokens: int | None = None  # HF semantics: key j visible iff i-W < j <= i
    rope_on_global_layers: bool = False  # EXAONE 4.0 1.2B (all global) uses RoPE everywhere
    # Norm placement: "pre" (K-EXAONE) or "qk_reorder" (EXAONE 4.0: no pre-norm, RMSNorm on the
    # attention and MLP outputs before each residual add).
    norm_placement: str = "pre"
    qk_norm: bool = True
    tie_embeddings: bool = False
    init_std: float = 0.02
    # MoE (num_experts = None: dense model).
    num_experts: int | None = None
    moe_ffn_hidden_size: int | None = None
    moe_top_k: int = 8
    moe_shared_expert_ffn_hidden_size: int | None = None
    moe_first_k_dense: int = 1  # layers [0, k) are dense
    moe_layer_types: list[str] | None = None  # explicit "dense"/"sparse" per layer (HF)
    moe_router_score: str = "sigmoid"
    moe_routed_scaling_factor: float = 2.5
    moe_norm_topk_prob: bool = True
    moe_expert_bias: bool = True  # selection-only routing bias (aux-loss-free balancing)
    moe_expert_bias_update_rate: float = 1e-4
    moe_seq_aux_loss_coeff: float = 1e-4
    moe_z_loss_coeff: float = 0.0
    # MTP: a block predicting token t+2, sharing embedding and LM head.
    mtp_num_layers: int = 0
    mtp_loss_weight: float = 0.05


@dataclass
class ParallelConfig:
    tp: int = 1
    pp: int = 1
    virtual_pp: int | None = None  # virtual stages per pipeline rank (interleaved 1F1B)
    ep: int = 1
    cp: int = 1
    # How attention exchanges the sequence under cp > 1 (megatron-core / TE cp_comm_type):
    # all_gather (K/V all-gathered; the only one on the local path) | a2a (Ulysses: heads
    # scattered) | p2p / a2a+p2p (ring; TE only, no sliding window).
    cp_comm_type: str = "all_gather"
    sequence_parallel: bool = False  # requires tp > 1
    expert_tp: int | None = None  # tensor parallelism inside experts; None = same as tp
    moe_token_dispatcher: str = "alltoall"
    distributed_optimizer: bool = False
    recompute: str = "none"  # none | selective | full

    @property
    def etp(self) -> int:
        """Effective expert tensor parallelism (expert_tp, defaulting to tp as megatron-LM)."""
        return self.expert_tp if self.expert_tp is not None else self.tp


@dataclass
class PrecisionConfig:
    dtype: str = "fp32"  # fp32 | bf16 (params and activations; master weights/grads stay fp32)
    fp8: str | None = None  # None | delayed | tensorwise | blockwise | mxfp8 (needs Transformer Engine)
    # FP8 data format: hybrid = E4M3 forward, E5M2 gradients (the published current-scaling
    # recipes, e.g. Megatron-Bridge's) | e4m3 = E4M3 for both.
    fp8_format: str = "hybrid"
    # Decoder layers kept in BF16 at the start / end of the model under FP8 (megatron-core's
    # first_last_layers_bf16; the MTP block stays FP8). null = the recipe's published default:
    # 1 and 1 for tensorwise (current scaling); 0 for delayed (megatron-core cannot), blockwise
    # and mxfp8.
    fp8_bf16_first_layers: int | None = None
    fp8_bf16_last_layers: int | None = None
    fp8_amax_history_len: int = 1024
    transformer_impl: str = "auto"  # auto | local | transformer_engine

    @property
    def fp8_bf16_layers(self) -> tuple[int, int]:
        """(first, last) decoder layers in BF16 under FP8, the recipe default filled in."""
        default = 1 if self.fp8 == "tensorwise" else 0
        first, last = self.fp8_bf16_first_layers, self.fp8_bf16_last_layers
        return (default if first is None else first, default if last is None else last)


@dataclass
class TrainConfig:
    """Batching and length of a (single-stage) run. Curriculum stages override these."""

    seq_length_tokens: int = 256
    micro_batch_samples: int = 2
    global_batch_samples: int = 8  # = micro_batch * DP * accumulation steps
    train_tokens: int | None = None  # stop after this many tokens (or train_steps)
    train_steps: int | None = 50
    # Block attention across packed documents. (Positions need no reset per document: RoPE
    # scores depend only on i - j, so within a document-masked sample they restart implicitly;
    # megatron's GPTModel ignores position_ids under RoPE anyway.)
    document_attention_mask: bool = True
    # Synthetic data ("synthetic"): a learnable generated token stream for smoke tests and
    # benchmarks; otherwise the data pipeline's stage dataset ("pipeline").
    data_source: str = "pipeline"
    data_stage: str = "pretrain"  # which of data.stages this run reads
    # Initial weights: a dist_checkpointing model directory (e.g. `exaone-train convert from-hf`
    # output's model/, or a checkpoint's model/) loaded under this run's layout.
    init_from: str | None = None


@dataclass
class GuardConfig:
    """Stability guard: skip bad steps, stop the run cleanly if they keep coming."""

    skip_nonfinite: bool = True
    spike_zscore: float = 6.0  # skip a step whose loss is this many stds above the window mean
    spike_window_steps: int = 50
    spike_min_history: int = 20
    max_skips_in_window: int = 10  # stop the run if this many steps are skipped in the window


@dataclass
class LoggingConfig:
    interval_steps: int = 1
    wandb: bool = True
    wandb_mode: str = "offline"  # offline | online | disabled
    wandb_project: str = "exaone-train"
    wandb_entity: str | None = None
    gpu_type: str | None = None  # for MFU; None = detect (CPU: no MFU)
    # true: every library's INFO and warnings on the console too (default: our own lines on
    # the console, everything in <run.dir>/logs/; exaone_train/console.py)
    verbose: bool = False


@dataclass
class CheckpointConfig:
    """Training checkpoints under `<run.dir>/checkpoints/` (see docs/CHECKPOINTS.md)."""

    enabled: bool = True
    interval_steps: int = 1000  # save every N steps (0 = off)
    interval_minutes: float = 0.0  # also save when this much wall time passed since the last (0 = off)
    keep_last: int = 3  # keep the newest N checkpoints (stage-final ones are always kept)
    save_final: bool = True  # save when the run ends (training done or stopped cleanly)
    load_from: str | None = None  # an explicit checkpoint directory to resume from
    resume: bool = True  # continue from the newest valid checkpoint of the run directory
    verify_on_load: str = "sha256"  # sha256 | size: how a checkpoint is checked before loading
    async_save: bool = False  # megatron-core async save (GPU only; not implemented on CPU)
    exit_on_signal: bool = True  # SIGTERM/SIGUSR1: save at the next step boundary, exit 3


@dataclass
class RunConfig:
    dir: str = "runs/default"


@dataclass
class EvalConfig:
    """Evaluations run on their own (`exaone-train niah`); curriculum gates carry their own."""

    niah: NiahConfig = field(default_factory=NiahConfig)


@dataclass
class RecipeConfig:
    model: ModelConfig = field(default_factory=ModelConfig)
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    precision: PrecisionConfig = field(default_factory=PrecisionConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    guard: GuardConfig = field(default_factory=GuardConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    run: RunConfig = field(default_factory=RunConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: DataRecipeConfig = field(default_factory=DataRecipeConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    seed: int = 1234


def register_configs() -> None:
    """Register schemas in Hydra's ConfigStore (idempotent)."""
    from hydra.core.config_store import ConfigStore

    cs = ConfigStore.instance()
    cs.store(name="recipe_schema", node=RecipeConfig)
    cs.store(group="model", name="model_schema", node=ModelConfig)
    cs.store(group="parallel", name="parallel_schema", node=ParallelConfig)
    cs.store(group="precision", name="precision_schema", node=PrecisionConfig)
    cs.store(group="optim", name="optim_schema", node=OptimConfig)
    cs.store(group="curriculum", name="curriculum_schema", node=CurriculumConfig)
    # data recipes (recipes/data/*.yaml) start with `defaults: [data_recipe_schema]`; inside
    # the `data` group that name resolves relative to the group
    cs.store(group="data", name="data_recipe_schema", node=DataRecipeConfig)
