"""Parameter groups with the LARS exclusions decided once, by module type (SPEC.md section 4)."""

from __future__ import annotations

from typing import Any

from torch import nn
from torch.nn.modules.batchnorm import _NormBase

__all__ = ["param_groups"]

# Normalisation layers whose parameters (scale and shift) are excluded from weight decay and from
# the LARS trust ratio. _NormBase covers BatchNorm*d, SyncBatchNorm, LazyBatchNorm and InstanceNorm;
# GroupNorm and LayerNorm do not derive from it.
_NORM_TYPES: tuple[type[nn.Module], ...] = (_NormBase, nn.GroupNorm, nn.LayerNorm)
if hasattr(nn, "RMSNorm"):  # torch >= 2.4
    _NORM_TYPES = (*_NORM_TYPES, nn.RMSNorm)


def param_groups(
    model: nn.Module,
    weight_decay: float,
    exclude_from_lars: tuple[str, ...] = ("classifier",),
    classifier_weight_decay: bool = False,
) -> list[dict[str, Any]]:
    """Split ``model``'s trainable parameters into named groups carrying LARS flags (SPEC.md section 4).

    Rules, applied once here so the optimiser never guesses from names or shapes:

    * ``"no_decay"`` (``weight_decay_enabled=False, lars_adaptation=False``): parameters owned by a
      normalisation layer (``_NormBase`` subclasses, i.e. BatchNorm/SyncBatchNorm/InstanceNorm, and
      GroupNorm/LayerNorm), by a module whose class sets ``no_weight_decay = True`` (e.g. a custom
      γ-only BN), and every parameter whose qualified name ends in ``"bias"``.
    * ``"classifier"``: the other parameters of any module whose qualified name is, or is under,
      one of ``exclude_from_lars`` (the supervised head): plain momentum SGD, no trust ratio.
      Their weight decay is off unless ``classifier_weight_decay`` is True.
    * ``"decay"`` (both flags True): everything else (conv and linear weights).

    ``classifier_weight_decay``: SPEC.md section 4 excludes the classifier from weight decay, which
    is the default. The official TF code instead adds ``wd·½‖W‖²`` for the (non-bias)
    ``head_supervised`` variables to the loss; pass True to reproduce that (same gradient, g + wd·W,
    with r = 1). It only matters when the classifier trains with non-zero weight decay.

    Every group has ``name``, ``params``, ``weight_decay`` (0.0 where decay is disabled, so the
    groups are also safe with ``torch.optim.SGD``), ``weight_decay_enabled`` and ``lars_adaptation``.
    Empty groups are dropped. Parameters with ``requires_grad=False`` (a frozen backbone) are left out.
    Shared parameters appear once. Call this on the bare model, before wrapping it in DDP or
    ``torch.compile``, so the qualified names match ``exclude_from_lars``.
    """
    if weight_decay < 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    if isinstance(exclude_from_lars, str):
        raise TypeError(
            f"exclude_from_lars must be a tuple of module names, got the string {exclude_from_lars!r}."
        )

    buckets: dict[str, list[nn.Parameter]] = {"decay": [], "no_decay": [], "classifier": []}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        excluded_module = isinstance(module, _NORM_TYPES) or getattr(module, "no_weight_decay", False) is True
        in_classifier = any(_is_under(module_name, prefix) for prefix in exclude_from_lars)
        # recurse=False: each parameter is judged by the module that owns it directly.
        for param_name, param in module.named_parameters(recurse=False):
            if id(param) in seen or not param.requires_grad:
                continue
            seen.add(id(param))
            if excluded_module or param_name.endswith("bias"):
                buckets["no_decay"].append(param)
            elif in_classifier:
                buckets["classifier"].append(param)
            else:
                buckets["decay"].append(param)

    flags = {
        "decay": (True, True),
        "no_decay": (False, False),
        "classifier": (classifier_weight_decay, False),
    }
    groups = []
    for name, params in buckets.items():
        if not params:
            continue
        decay_enabled, adaptation = flags[name]
        groups.append(
            {
                "name": name,
                "params": params,
                "weight_decay": weight_decay if decay_enabled else 0.0,
                "weight_decay_enabled": decay_enabled,
                "lars_adaptation": adaptation,
            }
        )
    return groups


def _is_under(module_name: str, prefix: str) -> bool:
    """True if ``module_name`` is ``prefix`` or a submodule of it ("classifier.0", not "classifier2")."""
    return module_name == prefix or module_name.startswith(prefix + ".")
