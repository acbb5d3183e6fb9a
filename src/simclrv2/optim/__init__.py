"""Optimisation: LARS, parameter groups with its exclusions, and LR schedules (SPEC.md section 4)."""

from simclrv2.optim.lars import LARS
from simclrv2.optim.param_groups import param_groups
from simclrv2.optim.schedules import scale_learning_rate, set_learning_rate, warmup_cosine

__all__ = ["LARS", "param_groups", "scale_learning_rate", "set_learning_rate", "warmup_cosine"]
