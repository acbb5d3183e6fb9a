"""Loader throughput on real-photo-sized JPEGs (issue 14), side by side in one run, medians of several passes:

* ours: :class:`simclrv2.data.BatchLoader` with ``crops`` on an image folder: whole-image random-resized
  crop boxes drawn in the main process, decoded (at a reduced JPEG scale where the crop allows) and rendered
  in DataLoader workers, uint8 batches;
* the usual recipe: torchvision's ``ImageFolder`` + ``RandomResizedCrop`` + ``RandomHorizontalFlip`` +
  ``ToTensor`` in DataLoader workers (and a variant with our filter and output: bicubic, uint8);

with the same workers, batch and crop size; then epochs 1 and 2 of a CIFAR-size folder (32x32 PNGs), where
the first epoch decodes into the in-memory cache and the second decodes nothing.

    python benchmarks/photo_loader.py                      # 2 workers, crops 224 and 96, ~10 min
    python benchmarks/photo_loader.py --workers 4 --images 2000

Every pipeline loads the same generated 500x375 JPEG photos (quality 90) and delivers the same views: one
crop per image (fine-tuning) or two per decoded image (pretraining). Colour distortion is in neither
measurement (ours runs batched on the device; the usual recipe would add ColorJitter to the workers).
Writes ``benchmarks/results/photo_loader.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.markers import splice_block

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "benchmarks" / "results" / "photo_loader.json"


def synthetic_photo(rng: np.random.Generator, width: int = 500, height: int = 375) -> np.ndarray:
    """A photo-like uint8 (H, W, 3) image: smooth colour gradients, a few soft blobs, sensor noise (JPEG
    decoding cost depends on the size and little on the content, but flat images compress unrealistically)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    base = (
        rng.uniform(0, 255, 3)
        + rng.uniform(-0.3, 0.3, 3) * xx[..., None]
        + rng.uniform(-0.3, 0.3, 3) * yy[..., None]
    )
    for _ in range(4):
        cx, cy, r = rng.uniform(0, width), rng.uniform(0, height), rng.uniform(20, 120)
        blob = np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * r * r))
        base += blob[..., None] * rng.uniform(-120, 120, 3)
    base += rng.normal(0, 6, base.shape)
    return base.clip(0, 255).astype(np.uint8)


def write_photo_folder(
    root: Path, n: int, classes: int = 4, seed: int = 0, size: tuple[int, int] = (500, 375)
) -> Path:
    """``root/train/<class>/*.jpg`` (torchvision's ImageFolder layout, also our imagefolder's)."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    for i in range(n):
        path = root / "train" / f"c{i % classes}" / f"photo{i:05d}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(synthetic_photo(rng, *size)).save(path, quality=90)
    return root


def _ours(root: Path, crop: int, views: int, workers: int, batch: int) -> Any:
    from simclrv2.data import BatchLoader, CropSpec, load_dataset

    data = load_dataset("imagefolder", "train", root=root, image_size=round(crop / 0.875))
    return BatchLoader(
        data, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers, crops=CropSpec(crop, views)
    )


class _Views:
    """The usual SimCLR recipe's wrapper: the same transform applied ``views`` times to one decoded image."""

    def __init__(self, transform: Any, views: int) -> None:
        self.transform, self.views = transform, views

    def __call__(self, image: Any) -> Any:
        import torch

        out = [self.transform(image) for _ in range(self.views)]
        return out[0] if self.views == 1 else torch.stack(out)


def _torchvision(root: Path, crop: int, views: int, workers: int, batch: int, uint8: bool = False) -> Any:
    """ImageFolder + RandomResizedCrop + RandomHorizontalFlip + ToTensor in DataLoader workers: the usual
    recipe (``uint8``: PILToTensor and bicubic, i.e. the same output and filter as ours)."""
    import torch
    from torchvision import datasets, transforms

    steps = [transforms.RandomResizedCrop(crop), transforms.RandomHorizontalFlip()]
    if uint8:
        steps[0] = transforms.RandomResizedCrop(crop, interpolation=transforms.InterpolationMode.BICUBIC)
    steps.append(transforms.PILToTensor() if uint8 else transforms.ToTensor())
    data = datasets.ImageFolder(str(root / "train"), transform=_Views(transforms.Compose(steps), views))
    return torch.utils.data.DataLoader(
        data,
        batch_size=batch,
        shuffle=True,
        drop_last=True,
        num_workers=workers,
        persistent_workers=workers > 0,
    )


def _epoch_seconds(loader: Any, ours: bool, epoch: int) -> tuple[float, int]:
    t0 = time.perf_counter()
    n = 0
    batches = loader.epoch(epoch) if ours else loader
    for item in batches:
        n += int(item[0].shape[0])
    return time.perf_counter() - t0, n


def throughput(root: Path, crop: int, views: int, workers: int, batch: int, repeats: int) -> dict[str, Any]:
    """Crops per second of each pipeline, the passes alternating (same machine state), medians; the first
    pass of each (worker start-up, page cache) is not counted."""
    pipelines = {
        "ours": (_ours(root, crop, views, workers, batch), True),
        "torchvision": (_torchvision(root, crop, views, workers, batch), False),
        "torchvision, bicubic + uint8 (our output)": (
            _torchvision(root, crop, views, workers, batch, True),
            False,
        ),
    }
    rates: dict[str, list[float]] = {name: [] for name in pipelines}
    for rep in range(repeats + 1):
        for name, (loader, ours) in pipelines.items():
            seconds, n = _epoch_seconds(loader, ours, rep)
            if rep:
                rates[name].append(n / seconds)
    med = {name: statistics.median(r) for name, r in rates.items()}
    return {
        "crop": crop,
        "views": views,
        "crops_per_second": med,
        "runs": rates,
        "ratio_ours_vs_torchvision": med["ours"] / med["torchvision"],
    }


def where_the_time_goes(root: Path, crop: int, n: int = 200, passes: int = 3) -> dict[str, float]:
    """Milliseconds per image in one process (median over passes after a warm-up pass) of each worker's job
    and its parts: decoding the whole JPEG (what the usual recipe does), our decode at the crop's scale,
    our whole job (that decode + rendering the box + the uint8 tensor), torchvision's transform on the
    decoded image (RandomResizedCrop + flip + ToTensor) and its whole job (decode + transform)."""
    import torch
    from PIL import Image
    from torchvision import transforms

    from simclrv2.data.augment import sample_crop_boxes
    from simclrv2.data.photos import _open_for_box, render_crop

    files = sorted((root / "train").rglob("*.jpg"))[:n]
    gen = torch.Generator().manual_seed(0)
    steps = [transforms.RandomResizedCrop(crop), transforms.RandomHorizontalFlip(), transforms.ToTensor()]
    tv = transforms.Compose(steps)
    names = (
        "decode whole JPEG",
        "ours: decode at the crop's scale",
        "ours: worker's job",
        "torchvision: transform",
        "torchvision: worker's job",
    )
    per_pass: list[list[float]] = []
    for _ in range(passes + 1):
        t = [0.0] * 5
        for f in files:
            t0 = time.perf_counter()
            with Image.open(f) as im:
                img = im.convert("RGB")
            t1 = time.perf_counter()
            tv(img)
            t2 = time.perf_counter()
            h, w = img.height, img.width
            top, left, bh, bw = sample_crop_boxes(1, h, w, gen)[0].tolist()
            t3 = time.perf_counter()
            _open_for_box(f, bh / h, bw / w, crop)
            t4 = time.perf_counter()
            render_crop(f, (top / h, left / w, bh / h, bw / w), False, crop)
            t5 = time.perf_counter()
            for i, dt in enumerate((t1 - t0, t4 - t3, t5 - t4, t2 - t1, t2 - t0)):
                t[i] += dt
        per_pass.append([1000 * v / len(files) for v in t])
    return {name: statistics.median(p[i] for p in per_pass[1:]) for i, name in enumerate(names)}


def cache_epochs(root: Path, n: int, batch: int, workers: int) -> dict[str, Any]:
    """A CIFAR-size user folder (32x32 PNGs): epoch 1 decodes it into memory (then crops on the device), epoch
    2 only crops; the same folder streamed (cache_gb=0, crops in workers) for reference."""
    import torch
    from PIL import Image

    from simclrv2.data import BatchLoader, CropSpec, crop_flip, load_dataset, user_folder

    rng = np.random.default_rng(1)
    if not (root / "labeled").is_dir():
        for i in range(n):
            part = f"labeled/c{i % 10}" if i < 100 else f"unlabeled/{i // 1000:02d}"
            path = root / part / f"{i:05d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(synthetic_photo(rng, 32, 32)).save(path)
        for i in range(20):
            path = root / "test" / f"c{i % 10}" / f"t{i}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(synthetic_photo(rng, 32, 32)).save(path)
    gen = torch.Generator().manual_seed(0)

    def epoch(loader: BatchLoader, e: int) -> float:
        t0 = time.perf_counter()
        for images, _ in loader.epoch(e):
            if not loader.crops_in_loader:
                crop_flip(images, 32, gen)
        return time.perf_counter() - t0

    out: dict[str, Any] = {"images": n}
    user_folder._SPLITS_CACHE.clear()
    user_folder._DECODED_CACHE.clear()
    t0 = time.perf_counter()
    data = load_dataset("folder", "train", root=root)
    decode = time.perf_counter() - t0
    assert data.images is not None
    loader = BatchLoader(data, batch_size=batch, crops=CropSpec(32))
    out["in_memory"] = {
        "scan_and_decode_s": decode,
        "epoch1_s": decode + epoch(loader, 0),
        "epoch2_s": epoch(loader, 1),
    }
    streamed = load_dataset("folder", "train", root=root, cache_gb=0)
    sl = BatchLoader(streamed, batch_size=batch, crops=CropSpec(32), num_workers=workers)
    out["streamed"] = {"epoch1_s": epoch(sl, 0), "epoch2_s": epoch(sl, 1)}
    return out


README = ROOT / "README.md"
MARK_BEGIN, MARK_END = "<!-- photo-loader -->", "<!-- /photo-loader -->"


def markdown(result: dict[str, Any]) -> str:
    """The README's table: crops per second of each pipeline and our ratio, then where the time goes and the
    cache's epochs."""
    m = result["machine"]
    lines = [
        f"_`{result['command'].strip()}` on {m['cpu']}, {result['workers']} DataLoader workers, batch "
        f"{result['batch']}, {result['images']} generated 500x375 JPEGs (quality 90); crops per second, "
        "median of the passes after the first (each pipeline's passes alternate with the others')._",
        "",
        "| crop, views per image | ours | torchvision (usual) | torchvision, bicubic + uint8 | ours/usual |",
        "|---|---:|---:|---:|---:|",
    ]
    for row in result["throughput"]:
        r = row["crops_per_second"]
        same_output = r["torchvision, bicubic + uint8 (our output)"]
        lines.append(
            f"| {row['crop']} px, {row['views']} | {r['ours']:.0f} | {r['torchvision']:.0f} | "
            f"{same_output:.0f} | {row['ratio_ours_vs_torchvision']:.2f}x |"
        )
    lines += ["", "Milliseconds per image in one process (where the time goes):", ""]
    lines += ["| crop | " + " | ".join(next(iter(result["ms_per_image"].values()))) + " |"]
    lines += ["|---|" + "---:|" * len(next(iter(result["ms_per_image"].values())))]
    for crop, ms in result["ms_per_image"].items():
        lines.append(f"| {crop} px | " + " | ".join(f"{v:.2f}" for v in ms.values()) + " |")
    c = result["cache"]
    lines += [
        "",
        f"CIFAR-size folder ({c['images']} 32x32 PNGs, loader + crops only): held in memory, epoch 1 (scan + "
        f"decode + pass) {c['in_memory']['epoch1_s']:.1f} s, epoch 2 {c['in_memory']['epoch2_s']:.2f} s; "
        f"streamed from the files ({result['workers']} workers): {c['streamed']['epoch1_s']:.1f} s and "
        f"{c['streamed']['epoch2_s']:.1f} s.",
    ]
    return "\n".join(lines)


def write_readme(text: str) -> None:
    splice_block(README, MARK_BEGIN, MARK_END, text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dir", default="data/photo_bench", help="where the generated folders go")
    parser.add_argument("--images", type=int, default=600)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--crops", type=int, nargs="+", default=[224, 96])
    parser.add_argument("--cifar-images", type=int, default=20000)
    parser.add_argument("--out", default=str(OUT))
    parser.add_argument("--readme", action="store_true", help="write the tables into README.md")
    parser.add_argument(
        "--from-json", help="only render an earlier run's JSON (with --readme: into README.md)"
    )
    args = parser.parse_args(argv)
    if args.from_json:
        text = markdown(json.loads(Path(args.from_json).read_text()))
        print(text)
        if args.readme:
            write_readme(text)
        return 0
    import torch

    from simclrv2.engine.pipeline import machine_description

    torch.set_num_threads(1)  # the main process only iterates; the workers do the work
    root = Path(args.dir)
    photos = root / "photos"
    if len(list(photos.rglob("*.jpg"))) != args.images:
        write_photo_folder(photos, args.images)
    result: dict[str, Any] = {
        "command": "python benchmarks/photo_loader.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "images": args.images,
        "workers": args.workers,
        "batch": args.batch,
        "throughput": [],
        "machine": machine_description(),
    }
    for crop in args.crops:
        for views in (1, 2):
            row = throughput(photos, crop, views, args.workers, args.batch, args.repeats)
            print(json.dumps(row))
            result["throughput"].append(row)
        result.setdefault("ms_per_image", {})[str(crop)] = where_the_time_goes(photos, crop)
        print(json.dumps(result["ms_per_image"][str(crop)]))
    result["cache"] = cache_epochs(root / "cifar_size", args.cifar_images, 256, args.workers)
    print(json.dumps(result["cache"]))
    Path(args.out).write_text(json.dumps(result, indent=1))
    text = markdown(result)
    print(text)
    if args.readme:
        write_readme(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
