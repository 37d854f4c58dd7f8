from exaone_train.optim.interim import InterimOptimConfig as OptimConfig
from exaone_train.optim.interim import build_optimizer, build_schedule

__all__ = ["OptimConfig", "build_optimizer", "build_schedule"]
