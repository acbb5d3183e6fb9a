"""Checkpoints: atomic writes, safe loads, unwrapped modules (STYLE.md lesson 9).

A checkpoint is a plain dict of tensors and Python primitives, so it loads with
``torch.load(weights_only=True)``: loading never executes code from the file.
Writes go to a temporary file in the same directory which is fsync'ed and then
``os.replace``'d over the target, so a crash or a kill mid-write leaves the
previous checkpoint intact.
"""

from __future__ import annotations

import errno
import glob
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

CHECKPOINT_FORMAT = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used; the message names the file and the problem."""


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module under DDP (``.module``) and ``torch.compile`` (``._orig_mod``) wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):
            module = module._orig_mod  # type: ignore[assignment]
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


class CheckpointWriteError(CheckpointError, OSError):
    """Writing a checkpoint failed (disk full, no permission...); the previous checkpoint is intact."""


def atomic_save(obj: Any, path: str | Path) -> None:
    """``torch.save`` to a temp file next to ``path``, fsync, then rename over ``path``.

    A failure (e.g. a full disk) raises :class:`CheckpointWriteError` and leaves ``path`` as it was; a
    process killed mid-write leaves only a stale temp file, which the next successful save removes.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        raise _write_error(path, err) from err
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(err, OSError):
            raise _write_error(path, err) from err
        raise
    # Make the rename itself durable.
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)
    # Temp files of writes that were killed (SIGKILL, power loss) before their rename: one writer per path
    # (rank 0), so any other temp file of this checkpoint is stale.
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        stale.unlink(missing_ok=True)


def _write_error(path: Path, err: OSError) -> CheckpointWriteError:
    reason = err.strerror or str(err)
    hint = " Free some disk space" if err.errno == errno.ENOSPC else " Fix the directory's space/permissions"
    exc = CheckpointWriteError(
        f"cannot write checkpoint {path}: {reason}. The previous checkpoint is intact ("
        f"{'exists' if path.exists() else 'none yet'});{hint}, or choose another run_dir, then resume with "
        "--resume."
    )
    exc.errno = err.errno
    return exc


def atomic_write_text(path: str | Path, text: str) -> None:
    """Write a small text file (results.json: the "stage finished" marker) so that a kill mid-write never
    leaves a half-written file: temp file, then rename."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def resolve_checkpoint_path(path: str | Path) -> Path:
    """``path``, or for a published model (``zoo:[category/]arch``) its converted checkpoint in the cache,
    downloaded and converted first if needed (:mod:`simclrv2.interop.zoo`)."""
    if str(path).startswith("zoo:"):
        from simclrv2.interop.zoo import resolve

        return resolve(str(path))
    return Path(path)


def load_checkpoint(path: str | Path, stage: str | None = None) -> dict[str, Any]:
    """Load a simclrv2 checkpoint safely (``weights_only=True``) and check it is one of ``stage``.
    ``path`` may be a ``zoo:`` reference to a published model (see :func:`resolve_checkpoint_path`)."""
    path = resolve_checkpoint_path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # a truncated file, a pickle with code in it, or not a checkpoint at all
        raise CheckpointError(
            f"cannot load checkpoint {path}: {type(err).__name__}: {str(err).splitlines()[0]}. "
            "It may be truncated, not a simclrv2 checkpoint, or contain code (refused: weights_only loading)."
        ) from None
    if not isinstance(ckpt, dict) or "format" not in ckpt or "model" not in ckpt:
        raise CheckpointError(f"{path} is not a simclrv2 checkpoint (no 'format'/'model' entries)")
    if stage is not None and ckpt.get("stage") != stage:
        raise CheckpointError(f"{path} is a {ckpt.get('stage')!r} checkpoint, expected a {stage!r} one")
    return ckpt


def rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_state_checked(
    module: nn.Module, state: dict[str, Any], path: str | Path, assign: bool = False
) -> None:
    """``module.load_state_dict(state)`` (strict); a mismatch raises :class:`CheckpointError` listing the
    missing, unexpected and mis-shaped keys (the checkpoint was made for another architecture).
    ``assign``: the module takes the state's tensors instead of copying them (for a module built on
    ``meta``, see :func:`simclrv2.models.meta.meta_modules`)."""
    own = module.state_dict()
    missing = sorted(k for k in own if k not in state)
    unexpected = sorted(k for k in state if k not in own)
    shapes = sorted(
        f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state and hasattr(state[k], "shape") and tuple(state[k].shape) != tuple(own[k].shape)
    )
    problems = [
        f"{what} {len(keys)} keys: {', '.join(keys[:6])}{', ...' if len(keys) > 6 else ''}"
        for what, keys in (("missing", missing), ("unexpected", unexpected), ("mis-shaped", shapes))
        if keys
    ]
    if problems:
        raise CheckpointError(
            f"{path} does not fit this model ({'; '.join(problems)}): it was made for another architecture "
            "(backbone, head or number of classes); use the config it was trained with, or another run_dir."
        )
    module.load_state_dict(state, assign=assign)
