"""Losses: NT-Xent for contrastive pretraining (SPEC.md section 3; with an optional memory of negatives),
distillation (section 6)."""

from simclrv2.losses.distill import distillation_loss
from simclrv2.losses.nt_xent import NTXentLoss, nt_xent, nt_xent_with_memory

__all__ = ["NTXentLoss", "distillation_loss", "nt_xent", "nt_xent_with_memory"]
