"""simclrv2: SimCLRv2 in PyTorch (Chen et al. 2020, arXiv 2006.10029).

The stages live in :mod:`simclrv2.engine` (``pretrain``, ``finetune``, ``distill``,
``supervised``, ``linear_eval``, ``pipeline``); the building blocks in :mod:`simclrv2.models`,
:mod:`simclrv2.losses`, :mod:`simclrv2.optim` and :mod:`simclrv2.data`; a trained classifier
with its preprocessing comes from :func:`load_classifier`. The reference for every number is
SPEC.md (the paper plus the official TensorFlow code).
"""

__version__ = "0.1.0"

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from simclrv2.inference import load_classifier

__all__ = ["__version__", "load_classifier"]


def __getattr__(name: str) -> Any:
    # Lazy: `import simclrv2` (and `simclrv2 --help`) stays free of torch until the API is used.
    if name == "load_classifier":
        from simclrv2.inference import load_classifier

        return load_classifier
    raise AttributeError(f"module 'simclrv2' has no attribute {name!r}")
