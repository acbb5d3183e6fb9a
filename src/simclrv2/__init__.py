"""simclrv2: SimCLRv2 in PyTorch (Chen et al. 2020, arXiv 2006.10029).

Stage 1 (contrastive pretraining) lives in :mod:`simclrv2.engine.pretrain`; the
building blocks are in :mod:`simclrv2.models`, :mod:`simclrv2.losses`,
:mod:`simclrv2.optim` and :mod:`simclrv2.data`. The reference for every number
is SPEC.md (the paper plus the official TensorFlow code).
"""

__version__ = "0.1.0"
