"""Using a trained classifier: load it with its preprocessing, predict on image files, export it.

:func:`load_classifier` turns a classifier checkpoint (``last.pt`` of a finetune, supervised or distill run)
into an :class:`ImageClassifier`: an ``nn.Module`` in eval mode that takes raw images, uint8 (0..255) or float
(0..1), ``(N, 1 or 3, H, W)`` of any size, and returns logits. It applies the evaluation preprocessing the
model was tested with (SPEC 5; no mean/std normalisation):

1. float RGB in [0, 1] (one channel replicated to three: :func:`~simclrv2.data.augment.to_float_rgb`);
2. images that are not already ``load_size`` square (the side of the dataset's images: 28 Fashion-MNIST,
   32 CIFAR, 96 STL-10, ``data.load_size`` or 256 for image folders) get their shorter side resized to
   ``load_size`` (bilinear, antialiased, as the image-folder loader does) and the centred square cut out;
3. the evaluation centre crop (:func:`~simclrv2.data.augment.center_crop`): the central 87.5% resized
   bicubically to ``image_size`` (the training crop), or only a resize for ``image_size`` <= 32.

On images of the dataset's size this is exactly what evaluation does
(:func:`simclrv2.engine.classify.predict_logits`), so the logits agree up to float rounding.

Export: :func:`export_torchscript` traces the preprocessing + model for one input shape and dtype; the file
loads with plain ``torch.jit.load`` (no simclrv2 needed) and carries the class names in an extra file
``simclrv2.json``. :func:`export_onnx` writes the same graph as ONNX (opset 18, any batch size; needs the
``export`` extra: onnx, onnxscript) and :func:`onnx_logits` runs it in onnxruntime. :func:`export_safetensors`
writes ``model.safetensors`` + ``model.json`` (needs the optional ``safetensors`` package);
:func:`load_classifier` reads that pair back.
"""

from __future__ import annotations

import csv
import json
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from simclrv2.checkpoint import CheckpointError, load_checkpoint
from simclrv2.data.augment import center_crop, to_float_rgb
from simclrv2.data.datasets import (
    DEFAULT_IMAGEFOLDER_SIZE,
    DEFAULT_SYNTHETIC_IMAGE_SIZE,
    FASHION_MNIST_CLASSES,
    IMAGE_EXTENSIONS,
    STL10_CLASSES,
    SYNTHETIC_CLASSES,
    decode_rgb,
)
from simclrv2.engine.finetune import build_model, build_model_from_checkpoint
from simclrv2.models import FineTuneModel

__all__ = [
    "EXPORT_FORMAT",
    "ImageClassifier",
    "Prediction",
    "Preprocess",
    "export_onnx",
    "export_safetensors",
    "export_torchscript",
    "find_images",
    "inference_metadata",
    "load_classifier",
    "onnx_logits",
    "predict_files",
    "write_predictions",
]

EXPORT_FORMAT = "simclrv2-classifier"
"""``format`` of an export's metadata (``model.json``, a TorchScript file's ``simclrv2.json``)."""
EXPORT_VERSION = 1
TORCHSCRIPT_META = "simclrv2.json"

# The side of each fixed-size dataset's images (what evaluation centre-crops from).
NATIVE_SIZES = {"fashion-mnist": 28, "cifar10": 32, "cifar100": 32, "stl10": 96}
KNOWN_CLASSES = {
    "fashion-mnist": list(FASHION_MNIST_CLASSES),
    "stl10": list(STL10_CLASSES),
    "synthetic": [f"class{i}" for i in range(SYNTHETIC_CLASSES)],
}
SAFETENSORS_MISSING = (
    "the safetensors format needs the optional 'safetensors' package, which is not installed: "
    "pip install safetensors (or use --format torchscript)"
)


# --- the model with its preprocessing -------------------------------------------------------------------


class Preprocess(nn.Module):
    """Raw images -> the model's input: float RGB in [0, 1], ``load_size`` square, evaluation centre crop.

    Input: uint8 (0..255) or float (0..1) ``(N, 1 or 3, H, W)``, any H and W. Output: float32
    ``(N, 3, image_size, image_size)``. No parameters.
    """

    def __init__(self, image_size: int, load_size: int, crop_fraction: float = 0.875) -> None:
        super().__init__()
        if image_size < 1 or load_size < 1:
            raise ValueError(
                f"image sizes must be positive, got image_size={image_size}, load_size={load_size}"
            )
        self.image_size = int(image_size)
        self.load_size = int(load_size)
        self.crop_fraction = float(crop_fraction)

    def forward(self, images: Tensor) -> Tensor:
        x = to_float_rgb(images)
        if tuple(x.shape[-2:]) != (self.load_size, self.load_size):
            x = resize_square(x, self.load_size)
        return center_crop(x, self.image_size, self.crop_fraction)

    def extra_repr(self) -> str:
        return f"image_size={self.image_size}, load_size={self.load_size}, crop_fraction={self.crop_fraction}"


def resize_square(x: Tensor, size: int) -> Tensor:
    """Float images: shorter side resized to ``size`` (bilinear, antialiased), then the centred square.

    The same geometry as the image-folder loader (torchvision ``resize(size)`` + ``center_crop(size)``).
    """
    h, w = int(x.shape[-2]), int(x.shape[-1])
    short, long = min(h, w), max(h, w)
    if short != size:
        new_long = int(size * long / short)  # torchvision's rounding
        h, w = (size, new_long) if h <= w else (new_long, size)
        x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp(0.0, 1.0)
    top, left = round((h - size) / 2.0), round((w - size) / 2.0)
    return x[:, :, top : top + size, left : left + size]


class ImageClassifier(nn.Module):
    """A trained classifier with its evaluation preprocessing: ``forward(raw images) -> logits``.

    Made by :func:`load_classifier`. ``forward`` takes a uint8 or float ``(N, 1 or 3, H, W)`` batch or a list
    of ``(1 or 3, H, W)`` images of different sizes, moves them to the model's device, and returns float
    logits ``(N, num_classes)``.

    Attributes:
        classes: class names (index = label).
        image_size: side of the model's input (the training crop).
        load_size: side of the dataset's images, which evaluation centre-crops from.
        arch: the architecture dict (``simclrv2.engine.finetune.model_arch``).
        preprocess: the :class:`Preprocess` module; ``model``: the :class:`FineTuneModel`.
    """

    def __init__(
        self, model: FineTuneModel, arch: dict[str, Any], classes: list[str], image_size: int, load_size: int
    ) -> None:
        super().__init__()
        num_classes = int(arch["num_classes"])
        if len(classes) != num_classes:
            raise ValueError(f"{len(classes)} class names for a model with {num_classes} outputs")
        self.preprocess = Preprocess(image_size, load_size)
        self.model = model
        self.arch = dict(arch)
        self.classes = list(classes)
        self.image_size = int(image_size)
        self.load_size = int(load_size)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def forward(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        return self.model(self.prepare(images))

    def prepare(self, images: Tensor | Sequence[Tensor]) -> Tensor:
        """The model's input for raw images (a batch, or a list of single images of any sizes)."""
        device = self.device
        if isinstance(images, Tensor):
            if images.dim() != 4:
                raise ValueError(
                    f"expected a batch (N, C, H, W) or a list of (C, H, W) images, got shape "
                    f"{tuple(images.shape)}"
                )
            return self.preprocess(images if images.device == device else images.to(device))
        if len(images) == 0:
            raise ValueError("no images given")
        return torch.cat([self.preprocess(im.to(device).unsqueeze(0)) for im in images])

    @torch.inference_mode()
    def predict(self, images: Tensor | Sequence[Tensor], topk: int = 5) -> tuple[Tensor, Tensor]:
        """(probabilities, class indices), each ``(N, min(topk, num_classes))``, best first, on the CPU."""
        if topk < 1:
            raise ValueError(f"topk must be >= 1, got {topk}")
        probs = self(images).float().softmax(dim=1)
        values, indices = probs.topk(min(topk, probs.shape[1]), dim=1)
        return values.cpu(), indices.cpu()

    def metadata(self) -> dict[str, Any]:
        """What an export stores next to the weights (``model.json``, TorchScript ``simclrv2.json``)."""
        return {
            "format": EXPORT_FORMAT,
            "version": EXPORT_VERSION,
            "arch": self.arch,
            "classes": self.classes,
            "image_size": self.image_size,
            "load_size": self.load_size,
            "preprocessing": "uint8 0..255 or float 0..1, (N, 1 or 3, H, W); RGB, no mean/std; shorter side "
            "to load_size + centre square; centre crop 0.875 (none at <= 32 px), bicubic to image_size",
        }


def inference_metadata(
    ckpt: dict[str, Any], image_size: int | None = None, load_size: int | None = None
) -> dict[str, Any]:
    """Class names, ``image_size`` and ``load_size`` of a classifier checkpoint.

    Checkpoints store them (``classes``, ``image_size``, ``load_size``); for older ones they are derived
    from the stage config's ``data`` section (dataset name, ``image_size``, ``load_size``). Class names
    that cannot be known without the data become "0".."K-1". Explicit ``image_size``/``load_size`` win.
    Raises CheckpointError when the sizes cannot be told (pass ``image_size=``).
    """
    data = (ckpt.get("config") or {}).get("data") or {}
    name = data.get("name")
    load = load_size or ckpt.get("load_size")
    if load is None:
        if name in NATIVE_SIZES:
            load = NATIVE_SIZES[name]
        elif name == "imagefolder":
            load = data.get("load_size") or DEFAULT_IMAGEFOLDER_SIZE
        elif name == "synthetic":
            load = data.get("load_size") or DEFAULT_SYNTHETIC_IMAGE_SIZE
    crop = image_size or ckpt.get("image_size") or data.get("image_size") or load
    if crop is None:
        raise CheckpointError(
            f"cannot tell which image size the model was trained at (dataset {name!r}, no 'image_size' "
            "in the checkpoint): pass image_size=... to load_classifier"
        )
    num_classes = int(ckpt["arch"]["num_classes"])
    classes = ckpt.get("classes") or KNOWN_CLASSES.get(str(name)) or []
    if len(classes) != num_classes:
        classes = [str(i) for i in range(num_classes)]
    return {"classes": [str(c) for c in classes], "image_size": int(crop), "load_size": int(load or crop)}


def load_classifier(
    path: str | Path,
    device: str | torch.device = "cpu",
    image_size: int | None = None,
    load_size: int | None = None,
) -> ImageClassifier:
    """A trained classifier with its preprocessing, in eval mode on ``device``.

    ``path``: a classifier checkpoint (``last.pt`` of finetune, supervised or distill; loaded with
    ``weights_only=True``), or an exported ``model.safetensors`` / ``model.json`` pair (either file).
    ``image_size`` / ``load_size`` override what the checkpoint records (see :func:`inference_metadata`).
    """
    path = Path(path)
    if path.suffix in (".safetensors", ".json"):
        classifier = _load_safetensors_pair(path, image_size, load_size)
    else:
        ckpt = load_checkpoint(path)
        if "arch" not in ckpt:
            raise CheckpointError(
                f"{path} is a {ckpt.get('stage')!r} checkpoint without a classifier: expected the last.pt "
                "of a finetune, supervised or distill run"
            )
        meta = inference_metadata(ckpt, image_size, load_size)
        model = build_model_from_checkpoint(ckpt)
        classifier = ImageClassifier(
            model, ckpt["arch"], meta["classes"], meta["image_size"], meta["load_size"]
        )
    return classifier.to(device).eval()


# --- predicting on files --------------------------------------------------------------------------------


@dataclass
class Prediction:
    """Top-k classes of one image file, best first."""

    path: str
    classes: list[str]
    probabilities: list[float]


def find_images(inputs: Iterable[str | Path]) -> list[Path]:
    """Image files of ``inputs`` in order: files as given, folders searched recursively (sorted, hidden files
    skipped, extensions: .jpg .jpeg .png .bmp .webp). Raises FileNotFoundError for a missing path or when
    no image is found at all."""
    files: list[Path] = []
    names = []
    for item in inputs:
        path = Path(item).expanduser()
        names.append(str(path))
        if path.is_dir():
            files += sorted(
                p
                for p in path.rglob("*")
                if p.suffix.lower() in IMAGE_EXTENSIONS and not p.name.startswith(".") and p.is_file()
            )
        elif path.is_file():
            files.append(path)
        else:
            raise FileNotFoundError(f"{path} does not exist")
    if not files:
        raise FileNotFoundError(f"no images ({' '.join(IMAGE_EXTENSIONS)}) found in {', '.join(names)}")
    return files


def predict_files(
    classifier: ImageClassifier,
    paths: Sequence[str | Path],
    topk: int = 5,
    batch_size: int = 64,
    on_skip: Callable[[Path, str], None] | None = None,
) -> tuple[list[Prediction], list[tuple[str, str]]]:
    """Decode and classify image files in batches; unreadable files are skipped.

    Returns (predictions in input order, skipped ``(path, reason)``); ``on_skip(path, reason)`` is called
    for each skipped file as it happens.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    predictions: list[Prediction] = []
    skipped: list[tuple[str, str]] = []
    for start in range(0, len(paths), batch_size):
        images, kept = [], []
        for p in paths[start : start + batch_size]:
            try:
                images.append(decode_rgb(p, min_size=classifier.load_size))
            except Exception as err:  # PIL raises many types for broken or foreign files
                reason = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}".rstrip(": ")
                skipped.append((str(p), reason))
                if on_skip is not None:
                    on_skip(Path(p), reason)
                continue
            kept.append(str(p))
        if not images:
            continue
        probs, indices = classifier.predict(images, topk)
        for p, pr, ix in zip(kept, probs.tolist(), indices.tolist(), strict=True):
            predictions.append(Prediction(p, [classifier.classes[i] for i in ix], pr))
    return predictions, skipped


def format_prediction(pred: Prediction) -> str:
    """``path<TAB>class:prob class:prob ...`` (probabilities with 4 decimals)."""
    return (
        pred.path
        + "\t"
        + " ".join(f"{c}:{p:.4f}" for c, p in zip(pred.classes, pred.probabilities, strict=True))
    )


def write_predictions(
    path: str | Path, predictions: Sequence[Prediction], skipped: Sequence[tuple[str, str]] = ()
) -> None:
    """``.csv``: one row per (image, rank): path, rank (1 = best), class, probability. ``.json``:
    ``{"predictions": [{"path", "classes", "probabilities"}], "skipped": [{"path", "reason"}]}``."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise ValueError(f"--output {path}: expected a .csv or .json file name")
    path.parent.mkdir(parents=True, exist_ok=True)
    if suffix == ".csv":
        with path.open("w", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["path", "rank", "class", "probability"])
            for pred in predictions:
                for rank, (c, p) in enumerate(zip(pred.classes, pred.probabilities, strict=True), start=1):
                    writer.writerow([pred.path, rank, c, f"{p:.6f}"])
    else:
        payload = {
            "predictions": [vars(p) for p in predictions],
            "skipped": [{"path": p, "reason": r} for p, r in skipped],
        }
        path.write_text(json.dumps(payload, indent=1))


# --- export ---------------------------------------------------------------------------------------------


def export_torchscript(
    classifier: ImageClassifier,
    path: str | Path,
    size: int | tuple[int, int] | None = None,
    channels: int = 3,
    dtype: torch.dtype = torch.uint8,
    check_on: Tensor | None = None,
) -> Path | tuple[Path, float]:
    """Trace preprocessing + model for inputs ``(N, channels, H, W)`` of ``dtype`` (uint8 0..255 or float32
    0..1) and save it with ``torch.jit.save``. ``size``: H = W, or (H, W); default ``load_size``.

    The traced graph is fixed to that channel count, size and dtype (any batch size N); it loads with plain
    ``torch.jit.load`` and holds the class names etc. in the extra file ``simclrv2.json``. TorchScript is
    deprecated in recent PyTorch (a FutureWarning on save and load) but still the one-file format that
    needs nothing but torch. With ``check_on`` (images of the input spec), returns (path, the largest
    difference between the traced module's logits and the classifier's on them): the saved file is that
    module (this package never loads TorchScript files itself: see docs/reliability.md, Security).
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 or 3, got {channels}")
    if dtype not in (torch.uint8, torch.float32):
        raise ValueError(f"dtype must be uint8 or float32, got {dtype}")
    h, w = (size, size) if isinstance(size, int) else size or (classifier.load_size, classifier.load_size)
    if h < 1 or w < 1:
        raise ValueError(f"size must be positive, got {h}x{w}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _example_input(classifier, channels, h, w, dtype)
    classifier.eval()
    meta = classifier.metadata()
    meta["input"] = {"shape": ["N", channels, h, w], "dtype": str(dtype).replace("torch.", "")}
    with warnings.catch_warnings():
        # Python ints from shapes are constants in the trace: intended, the input shape is fixed. And the
        # deprecation of torch.jit (FutureWarning) is documented above: no need to repeat it on every export.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+. is deprecated", category=FutureWarning)
        traced = torch.jit.trace(classifier, example)
        torch.jit.save(traced, str(path), _extra_files={TORCHSCRIPT_META: json.dumps(meta)})
    if check_on is None:
        return path
    with torch.inference_mode():
        x = check_on.to(classifier.device)
        diff = float((traced(x).float() - classifier(x).float()).abs().max())
    return path, diff


def _example_input(classifier: ImageClassifier, channels: int, h: int, w: int, dtype: torch.dtype) -> Tensor:
    """Two random images of the export's input spec (uint8 0..255 or float32 0..1), on the model's device."""
    gen = torch.Generator().manual_seed(0)
    example = torch.randint(0, 256, (2, channels, h, w), generator=gen, dtype=torch.uint8)
    if dtype == torch.float32:
        example = example.float() / 255.0
    return example.to(classifier.device)


def _safetensors() -> Any:
    try:
        import safetensors.torch
    except ImportError:
        raise ImportError(SAFETENSORS_MISSING) from None
    return safetensors.torch


def export_safetensors(classifier: ImageClassifier, path: str | Path) -> tuple[Path, Path]:
    """Write the weights as ``path`` (``model.safetensors``) and the metadata (architecture, class names,
    image sizes) as the ``.json`` file next to it; returns both paths. :func:`load_classifier` reads either.
    Raises ImportError (saying ``pip install safetensors``) when the package is not installed."""
    st = _safetensors()
    path = Path(path)
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: a safetensors export must end in .safetensors")
    meta_path = path.with_suffix(".json")
    path.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous().clone() for k, v in classifier.model.state_dict().items()}
    meta = classifier.metadata()
    st.save_file(state, str(path), metadata={"format": EXPORT_FORMAT})
    meta_path.write_text(json.dumps(meta, indent=1))
    return path, meta_path


def _load_safetensors_pair(path: Path, image_size: int | None, load_size: int | None) -> ImageClassifier:
    weights, meta_path = path.with_suffix(".safetensors"), path.with_suffix(".json")
    for p in (weights, meta_path):
        if not p.is_file():
            raise CheckpointError(
                f"{p} does not exist: a safetensors export is a pair {weights.name} + {meta_path.name}"
            )
    try:
        meta = json.loads(meta_path.read_text())
    except (OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {meta_path}: {err}") from None
    if not isinstance(meta, dict) or meta.get("format") != EXPORT_FORMAT:
        raise CheckpointError(f"{meta_path} is not a simclrv2 export (no format {EXPORT_FORMAT!r})")
    if int(meta.get("version", 0)) > EXPORT_VERSION:
        raise CheckpointError(f"{meta_path}: export version {meta['version']} is newer than this simclrv2")
    state = _safetensors().load_file(str(weights), device="cpu")
    model = build_model(meta["arch"])
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{weights} does not match the architecture in {meta_path}: {err}") from None
    crop, load = image_size or meta["image_size"], load_size or meta["load_size"]
    return ImageClassifier(model, meta["arch"], meta["classes"], crop, load)


ONNX_MISSING = (
    "ONNX export needs the optional packages onnx, onnxscript and onnxruntime (to check the file): "
    "pip install 'simclrv2[export]' (or pip install onnx onnxscript onnxruntime)"
)
ONNX_META = "simclrv2"
"""Key of the metadata (class names, sizes, preprocessing) in an ONNX export's ``metadata_props``."""


def export_onnx(
    classifier: ImageClassifier,
    path: str | Path,
    size: int | None = None,
    channels: int = 3,
    dtype: torch.dtype = torch.uint8,
) -> Path:
    """Export preprocessing + model to ONNX (opset 18, PyTorch's ``torch.export``-based exporter) for
    inputs ``images`` = ``(N, channels, size, size)`` of ``dtype`` (uint8 0..255 or float32 0..1), any N;
    output ``logits`` ``(N, num_classes)``. ``size`` defaults to ``load_size``. Class names, sizes and the
    preprocessing are in the model's ``metadata_props`` under ``simclrv2`` (JSON). Written atomically.

    Needs ``onnx`` and ``onnxscript`` (the ``export`` extra); :func:`onnx_logits` runs the file with
    onnxruntime to check it."""
    try:
        import onnx
    except ImportError:
        raise ImportError(ONNX_MISSING) from None
    if channels not in (1, 3) or dtype not in (torch.uint8, torch.float32):
        raise ValueError(f"channels must be 1 or 3 and dtype uint8 or float32, got {channels}, {dtype}")
    side = size or classifier.load_size
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    example = _example_input(classifier, channels, side, side, dtype)
    classifier = classifier.eval()
    batch = torch.export.Dim("batch", min=1, max=1 << 16)
    tmp = path.with_name(f".{path.name}.tmp")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the exporter's notes on shape specialisation: the size is fixed
        torch.onnx.export(
            classifier, (example,), str(tmp), input_names=["images"],
            output_names=["logits"], dynamic_shapes={"images": {0: batch}}, dynamo=True, opset_version=18,
            verbose=False, external_data=False,
        )  # fmt: skip
    model = onnx.load(str(tmp))
    meta = classifier.metadata()
    meta["input"] = {"name": "images", "shape": ["N", channels, side, side], "dtype": str(dtype)[6:]}
    onnx.helper.set_model_props(model, {ONNX_META: json.dumps(meta)})
    onnx.save(model, str(tmp))
    tmp.replace(path)
    return path


def onnx_logits(path: str | Path, images: Tensor) -> Tensor:
    """Logits of an ONNX export for ``images`` (its input dtype and shape), run by onnxruntime on the CPU."""
    try:
        import onnxruntime
    except ImportError:
        raise ImportError(ONNX_MISSING) from None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (out,) = session.run(["logits"], {"images": images.cpu().numpy()})
    return torch.from_numpy(out)
