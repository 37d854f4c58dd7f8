"""Hugging Face (ExaoneMoe / Exaone4) <-> megatron-core conversion."""

from exaone_train.export.convert import (
                                         convert_from_hf,
                                         convert_to_hf,
                                         export_hf_state_dict,
                                         load_hf_state_dict,
                                         model_config_for_hf,
)
from exaone_train.export.hf_config import hf_config_to_model_config, model_config_to_hf_config
from exaone_train.export.mapping import hf_to_mcore, mcore_to_hf

__all__ = ["convert_from_hf", "convert_to_hf", "export_hf_state_dict", "load_hf_state_dict",
           "model_config_for_hf", "hf_config_to_model_config", "model_config_to_hf_config",
           "hf_to_mcore", "mcore_to_hf"]
