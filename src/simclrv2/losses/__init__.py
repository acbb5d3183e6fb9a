"""Losses: NT-Xent for contrastive pretraining (SPEC.md section 3)."""

from simclrv2.losses.nt_xent import NTXentLoss, nt_xent

__all__ = ["NTXentLoss", "nt_xent"]
