"""exaone-train data pipeline: sources -> NFC -> tokenizer -> megatron-core `.bin/.idx` shards
-> blends -> packed samples -> a deterministic, world-size-free sampler. Never imports
`torch.distributed`.

The interface the trainer uses::

    from data_pipeline import build_stage_dataset, StageDataset, Sample
    ds: StageDataset = build_stage_dataset(stage_cfg, seed=1234)  # stage_cfg: StageDataConfig
    ds.num_samples           # samples available before any blend component repeats (epoch 2)
    sample: Sample = ds[global_index]   # deterministic, world-size free
    sample.tokens            # np.int64 [seq_length + 1]: inputs tokens[:-1], labels tokens[1:]
    sample.loss_mask         # np.float32 [seq_length], 0 where the label is padding
    sample.document_ids      # np.int32 [seq_length]: packed document of each input position
                             # (0..k-1; the padding tail is segment k)
    sample.position_ids      # np.int64 [seq_length]: 0 at each document start when
                             # stage_cfg.reset_position_ids, else arange
    sample.source            # str: blend component name
    ds.global_batch_indices(step, global_batch_samples)  # range of global indices of a step
    ds.rank_slice(indices, dp_rank, dp_size)  # this DP rank's contiguous slice of the batch
    ds.advance(n)                             # n more global samples consumed
    ds.state_dict() / ds.load_state_dict(d)   # {stage, seed, consumed_samples, fingerprint}

Other entry points: `data_pipeline.build.build(BuildConfig)` (shards + manifest.json;
`build(cfg, worker=(i, n))` one worker's share), `data_pipeline.merge.merge(BuildConfig)` (join
the workers' partial manifests), `data_pipeline.decontam` (n-gram decontamination),
`data_pipeline.recipe.load_data_recipe(name, overrides)` (recipes/data/*.yaml),
`data_pipeline.tokenizer.train_tokenizer(...)` (BPE / SuperBPE),
`data_pipeline.synth.generate_corpus(out_dir, seed)` (the shipped corpus).
"""

from data_pipeline.config import (
    BlendComponent,
    BuildConfig,
    DataRecipeConfig,
    SourceConfig,
    StageDataConfig,
)
from data_pipeline.dataset import Sample, StageDataset, build_stage_dataset

__all__ = ["BlendComponent", "BuildConfig", "DataRecipeConfig", "Sample", "SourceConfig",
           "StageDataConfig", "StageDataset", "build_stage_dataset"]
