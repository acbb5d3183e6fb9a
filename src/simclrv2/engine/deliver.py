"""What a run on a user's folder hands over (issue 14): the final model exported with its preprocessing
(``model/``), and the predicted labels of the unlabeled pool (``pool_predictions.csv``).

``model/`` holds ``model.pt`` (the classifier checkpoint without optimiser state: what
:func:`simclrv2.load_classifier` and ``simclrv2 predict`` read), ``model.torchscript.pt`` and ``model.onnx``
(preprocessing + model for uint8 ``(N, 3, load_size, load_size)`` RGB input, any N) and ``model.json`` (class
names, sizes, the preprocessing, and the check: both exports are run on real images of the evaluation set
and must give the checkpoint's logits; ONNX runs in onnxruntime). Every file is written atomically.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import warnings
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset, Subset

from simclrv2.checkpoint import atomic_save, load_checkpoint
from simclrv2.data.augment import to_float_rgb
from simclrv2.data.datasets import BadImagesError, ImageData
from simclrv2.data.user_folder import FolderSplits
from simclrv2.engine.runtime import echo, resolve_device, resolve_precision

__all__ = ["CHECK_IMAGES", "export_model_dir", "square_batch", "write_pool_predictions"]

CHECK_IMAGES = 16
_KEEP = ("format", "stage", "config", "arch", "classes", "image_size", "load_size", "model", "teacher")
UNREADABLE = -2


def square_batch(data: ImageData, n: int, side: int) -> Tensor:
    """The first ``n`` images of ``data`` as uint8 RGB ``(n, 3, side, side)``: the exports' input."""
    n = min(n, len(data))
    if data.images is not None:
        x = data.images[:n]
        if tuple(x.shape[-2:]) != (side, side):
            from simclrv2.inference import resize_square

            x = (resize_square(to_float_rgb(x), side) * 255).round().clamp(0, 255).to(torch.uint8)
        return x.expand(-1, 3, -1, -1).contiguous() if x.shape[1] == 1 else x.contiguous()
    assert data.dataset is not None
    return torch.stack([data.dataset[i][0] for i in range(n)])


def _atomic_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    tmp.replace(path)


def export_model_dir(ckpt_path: Path, out: Path, check_on: ImageData, source: str) -> dict[str, Any]:
    """Write ``out/`` (see the module docstring) from a classifier checkpoint; returns what ``model.json``
    says. The exports are checked on the first images of ``check_on``; a mismatch is a loud warning (the
    checkpoint stays usable), a missing ONNX toolchain a warning naming the packages."""
    from simclrv2.inference import export_onnx, export_torchscript, load_classifier, onnx_logits

    out.mkdir(parents=True, exist_ok=True)
    ckpt = load_checkpoint(ckpt_path)
    atomic_save({k: ckpt[k] for k in _KEEP if k in ckpt}, out / "model.pt")
    clf = load_classifier(out / "model.pt", "cpu")
    images = square_batch(check_on, CHECK_IMAGES, clf.load_size)
    with torch.inference_mode():
        reference = clf(images).float()
    files = {"checkpoint": str(out / "model.pt")}
    checks: dict[str, float] = {}

    tmp = out / ".model.torchscript.pt.tmp"
    _, checks["torchscript (traced)"] = export_torchscript(  # type: ignore[misc]
        clf, tmp, clf.load_size, 3, torch.uint8, check_on=images
    )
    tmp.replace(out / "model.torchscript.pt")
    files["torchscript"] = str(out / "model.torchscript.pt")
    try:
        export_onnx(clf, out / "model.onnx", clf.load_size, 3, torch.uint8)
        files["onnx"] = str(out / "model.onnx")
        checks["onnx (onnxruntime)"] = float(
            (onnx_logits(out / "model.onnx", images) - reference).abs().max()
        )
    except ImportError as err:
        warnings.warn(f"model.onnx not written: {err}", UserWarning, stacklevel=2)
    tolerance = 1e-3 * max(1.0, float(reference.abs().max()))
    bad = {k: v for k, v in checks.items() if not v <= tolerance}
    if bad:
        warnings.warn(
            f"exported models differ from the checkpoint {ckpt_path} by more than {tolerance:.2g}: {bad}; "
            "use model/model.pt (simclrv2.load_classifier) until this is fixed",
            UserWarning,
            stacklevel=2,
        )
    info = {
        **clf.metadata(),
        "source": source,
        "source_checkpoint": str(ckpt_path),
        "input": {"shape": ["N", 3, clf.load_size, clf.load_size], "dtype": "uint8", "range": "0..255"},
        "files": files,
        "checks": checks,
        "check_tolerance": tolerance,
        "checked_images": len(images),
    }
    _atomic_text(out / "model.json", json.dumps(info, indent=1))
    echo(f"model: {', '.join(files.values())}; exports checked on {len(images)} images: {checks}")
    return info


class _Strict(Dataset):
    """The evaluation images of a streamed split, read without the ``skip`` policy's replacement by the next
    image: a file that fails to decode yields zeros and the label :data:`UNREADABLE`, so that every
    prediction row belongs to its own file."""

    def __init__(self, dataset: Dataset) -> None:
        if isinstance(dataset, Subset):
            base = copy.copy(dataset.dataset)
            base.bad_images = "fail"  # type: ignore[attr-defined]
            self.dataset: Dataset = Subset(base, dataset.indices)
        else:
            self.dataset = copy.copy(dataset)
            self.dataset.bad_images = "fail"  # type: ignore[attr-defined]
        self.image_shape = getattr(dataset, "image_shape", None)

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        try:
            image, _ = self.dataset[i]
            return image, 0
        except BadImagesError:
            assert self.image_shape is not None
            return torch.zeros(self.image_shape, dtype=torch.uint8), UNREADABLE


def write_pool_predictions(
    ckpt_path: Path,
    pool: ImageData,
    splits: FolderSplits,
    out: Path,
    stage_config: Any,
    show_progress: bool = True,
) -> dict[str, Any]:
    """``out`` (CSV): for every unlabeled image, the predicted class and its probability and the runner-up,
    least confident first (ties by path); files that cannot be decoded come last with an empty prediction.
    Evaluation preprocessing, the final model in eval mode. Returns a summary for the report."""
    from simclrv2.engine.classify import predict_logits
    from simclrv2.engine.finetune import build_model_from_checkpoint

    ckpt = load_checkpoint(ckpt_path)
    model = build_model_from_checkpoint(ckpt)
    device = resolve_device(stage_config.device)
    precision = resolve_precision(stage_config.precision, device)
    data = pool
    if pool.dataset is not None:
        data = ImageData(
            None, pool.labels.clone(), pool.classes, dataset=_Strict(pool.dataset), name=pool.name
        )
    paths = [splits.relative(p) for p in splits.unlabeled]
    if len(paths) != len(pool):
        raise RuntimeError(f"pool of {len(pool)} images but {len(paths)} unlabeled files")  # a bug
    logits, flags = predict_logits(
        model.to(device), data, device, precision, stage_config.eval_batch_size, int(ckpt["image_size"]),
        stage_config.channels_last, desc="pool predictions", show_progress=show_progress,
    )  # fmt: skip
    probs = logits.float().softmax(dim=1)
    top = probs.topk(min(2, probs.shape[1]), dim=1)
    classes = list(ckpt.get("classes") or splits.classes)
    rows = []
    for i, path in enumerate(paths):
        p, c = top.values[i].tolist(), top.indices[i].tolist()
        rows.append((bool(flags[i] == UNREADABLE), p[0], path, classes[c[0]], classes[c[-1]], p[-1]))
    rows.sort(key=lambda r: (r[0], r[1], r[2]))
    tmp = out.with_name(f".{out.name}.tmp")
    with tmp.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "prediction", "probability", "runner_up", "runner_up_probability"])
        for unreadable, prob, path, pred, second, p2 in rows:
            if unreadable:
                writer.writerow([path, "", "", "", ""])
            else:
                writer.writerow([path, pred, f"{prob:.6f}", second, f"{p2:.6f}"])
    os.replace(tmp, out)
    readable = [r for r in rows if not r[0]]
    counts = {c: 0 for c in classes}
    for r in readable:
        counts[r[3]] += 1
    echo(f"pool: {len(rows)} unlabeled images labeled -> {out}")
    return {
        "file": str(out),
        "rows": len(rows),
        "unreadable": len(rows) - len(readable),
        "mean_probability": sum(r[1] for r in readable) / max(1, len(readable)),
        "predicted_per_class": counts,
        "least": [{"path": r[2], "prediction": r[3], "probability": r[1]} for r in readable[:10]],
    }
