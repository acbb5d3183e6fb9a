"""The published SimCLRv2 models: their list, the download cache and ``zoo:`` references (SPEC §7, §8).

The authors released 13 architectures (the paper's Table 1) x 7 categories as TF1 checkpoints under
``gs://simclr-checkpoints/simclrv2/<category>/<arch>/``, served over HTTPS from
``https://storage.googleapis.com/simclr-checkpoints/simclrv2/...``. A reference ``zoo:finetuned_10pct/
r152_3x_sk1`` (or ``zoo:r50_2x_sk1`` for the pretrained one) is resolved by :func:`resolve`: the converted
checkpoint in the cache if there is one; else the TF files in the cache (downloaded before, or put there by
hand) are converted once; else they are downloaded first: the ``checkpoint`` file names the step, the
``.index`` says how many ``.data`` shards there are. Downloads go to ``NAME.part`` and resume from there
with an HTTP Range request; the checksums are verified when the files are read. Without a network the error
says exactly which files to fetch and where to put them.

Cache: ``$SIMCLRV2_CACHE`` or ``~/.cache/simclrv2``, then ``zoo/<category>/<arch>/`` (``tf/`` for the
TensorFlow files, ``<category>_<arch>.pt`` for the conversion). ``$SIMCLRV2_ZOO_URL`` replaces the base URL
(a mirror; the tests use a local server).
"""

from __future__ import annotations

import http.client
import os
import re
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from simclrv2.checkpoint import CheckpointError
from simclrv2.interop.convert import CATEGORIES, convert_checkpoint
from simclrv2.interop.tensorbundle import BundleError, TensorBundle, _fields, _read_table
from simclrv2.models.registry import OFFICIAL_BACKBONES

__all__ = [
    "ACCURACY",
    "ZooError",
    "cache_dir",
    "format_table",
    "parse_reference",
    "resolve",
]

DEFAULT_URL = "https://storage.googleapis.com/simclr-checkpoints/simclrv2"
GSUTIL_URL = "gs://simclr-checkpoints/simclrv2"
PREFIX = "zoo:"

# The official README's table (google-research/simclr, "Pre-trained models for SimCLRv2"): parameters (M)
# and ImageNet top-1 (%) of fine-tuning on 1% / 10% / 100% of the labels, linear evaluation, supervised.
_README_TABLE = {
    "r50_1x_sk0": (24, 57.9, 68.4, 76.3, 71.7, 76.6),
    "r50_1x_sk1": (35, 64.5, 72.1, 78.7, 74.6, 78.5),
    "r50_2x_sk0": (94, 66.3, 73.9, 79.1, 75.6, 77.8),
    "r50_2x_sk1": (140, 70.6, 77.0, 81.3, 77.7, 79.3),
    "r101_1x_sk0": (43, 62.1, 71.4, 78.2, 73.6, 78.0),
    "r101_1x_sk1": (65, 68.3, 75.1, 80.6, 76.3, 79.6),
    "r101_2x_sk0": (170, 69.1, 75.8, 80.7, 77.0, 78.9),
    "r101_2x_sk1": (257, 73.2, 78.8, 82.4, 79.0, 80.1),
    "r152_1x_sk0": (58, 64.0, 73.0, 79.3, 74.5, 78.3),
    "r152_1x_sk1": (89, 70.0, 76.5, 81.3, 77.2, 79.9),
    "r152_2x_sk0": (233, 70.2, 76.6, 81.1, 77.4, 79.1),
    "r152_2x_sk1": (354, 74.2, 79.4, 82.9, 79.4, 80.4),
    "r152_3x_sk1": (795, 74.9, 80.1, 83.1, 79.8, 80.5),
}
PARAMS_M = {arch: row[0] for arch, row in _README_TABLE.items()}
# Category -> the README column it is evaluated in (pretrained: its linear-eval head). The distilled models
# are not in that table: no accuracy is shown for them.
ACCURACY: dict[str, dict[str, float | None]] = {
    category: {arch: (None if column is None else row[column]) for arch, row in _README_TABLE.items()}
    for category, column in {
        "pretrained": 4,
        "finetuned_1pct": 1,
        "finetuned_10pct": 2,
        "finetuned_100pct": 3,
        "supervised": 5,
        "distill_1pct": None,
        "distill_10pct": None,
    }.items()
}
assert set(_README_TABLE) == set(OFFICIAL_BACKBONES)


class ZooError(CheckpointError):
    """A zoo reference that cannot be resolved: a bad name, or files that cannot be had (the message says
    which files to fetch and where to put them)."""


def cache_dir() -> Path:
    """``$SIMCLRV2_CACHE`` or ``~/.cache/simclrv2``."""
    return Path(os.environ.get("SIMCLRV2_CACHE") or Path.home() / ".cache" / "simclrv2").expanduser()


def base_url() -> str:
    return os.environ.get("SIMCLRV2_ZOO_URL", DEFAULT_URL).rstrip("/")


def parse_reference(ref: str) -> tuple[str, str]:
    """``zoo:[category/]arch`` -> (category, arch); the category defaults to ``pretrained``."""
    body = ref[len(PREFIX) :] if ref.startswith(PREFIX) else ref
    category, _, arch = body.rpartition("/")
    category = category or "pretrained"
    if category not in CATEGORIES or arch not in OFFICIAL_BACKBONES:
        raise ZooError(
            f"{ref!r} is not a published model: expected zoo:[CATEGORY/]ARCH with CATEGORY in "
            f"{', '.join(CATEGORIES)} (default pretrained) and ARCH in {', '.join(OFFICIAL_BACKBONES)} "
            "(simclrv2 zoo lists them)"
        )
    return category, arch


def model_dir(category: str, arch: str) -> Path:
    return cache_dir() / "zoo" / category / arch


def converted_path(category: str, arch: str) -> Path:
    return model_dir(category, arch) / f"{category}_{arch}.pt"


def resolve(ref: str, say: Callable[[str], None] = print, show_progress: bool = True) -> Path:
    """The local converted checkpoint of a ``zoo:`` reference: cached, else converted from the cached TF
    files, else downloaded (resumable) and converted. Raises ZooError with instructions when offline."""
    category, arch = parse_reference(ref)
    out = converted_path(category, arch)
    if out.is_file():
        return out
    tf_dir = model_dir(category, arch) / "tf"
    if not _complete(tf_dir):
        download(category, arch, tf_dir, say, show_progress)
    say(f"zoo: converting {category}/{arch} (once; reused from {out})")
    plan = convert_checkpoint(tf_dir, out, category=category, say=say, show_progress=show_progress)
    if plan.source.spec.backbone != arch:
        out.unlink()
        raise ZooError(f"{tf_dir} holds a {plan.source.spec.backbone}, not {arch}: remove it and fetch again")
    return out


def _complete(tf_dir: Path) -> bool:
    if not (tf_dir / "checkpoint").is_file():
        return False
    try:
        TensorBundle(tf_dir).close()  # the index, and every shard at its full size
    except BundleError:
        return False
    return True


def download(
    category: str, arch: str, tf_dir: Path, say: Callable[[str], None] = print, show_progress: bool = True
) -> None:
    """Fetch ``checkpoint``, the ``.index`` it names and every ``.data`` shard into ``tf_dir``."""
    url = f"{base_url()}/{category}/{arch}"
    tf_dir.mkdir(parents=True, exist_ok=True)
    prefix = None
    try:
        _fetch(f"{url}/checkpoint", tf_dir / "checkpoint", show_progress, always=True)
        prefix = _named_prefix(tf_dir / "checkpoint")
        _fetch(f"{url}/{prefix}.index", tf_dir / f"{prefix}.index", show_progress)
        shards = _num_shards(tf_dir / f"{prefix}.index")
        for shard in range(shards):
            name = f"{prefix}.data-{shard:05d}-of-{shards:05d}"
            _fetch(f"{url}/{name}", tf_dir / name, show_progress)
    except (urllib.error.URLError, OSError, TimeoutError, http.client.HTTPException) as err:
        raise ZooError(_offline_message(category, arch, tf_dir, url, prefix, err)) from None
    say(f"zoo: downloaded {category}/{arch} into {tf_dir}")


def _named_prefix(state: Path) -> str:
    m = re.search(r'^model_checkpoint_path:\s*"([^"]+)"', state.read_text(errors="replace"), re.MULTILINE)
    if m is None:
        raise ZooError(f"{state} names no model_checkpoint_path: not a TensorFlow 'checkpoint' file")
    return Path(m.group(1)).name


def _num_shards(index: Path) -> int:
    header = dict(_read_table(index.read_bytes(), str(index))).get(b"")
    if header is None:
        raise ZooError(f"{index} has no bundle header: not a TensorFlow checkpoint index")
    return int(_fields(header, str(index)).get(1, [1])[-1])


def _offline_message(
    category: str, arch: str, tf_dir: Path, url: str, prefix: str | None, err: object
) -> str:
    reason = getattr(err, "reason", None) or err
    step = prefix or "model.ckpt-N"
    files = ["checkpoint", f"{step}.index", f"{step}.data-00000-of-00001"]
    which = "" if prefix else " (N: the step named in the 'checkpoint' file)"
    return (
        f"cannot download zoo:{category}/{arch} from {url}/ ({reason}). Fetch these files on a machine "
        f"with a network and put them into {tf_dir}/: {', '.join(files)}{which}, e.g. "
        f"`gsutil -m cp {GSUTIL_URL}/{category}/{arch}/checkpoint '{GSUTIL_URL}/{category}/{arch}/{step}.*' "
        f"{tf_dir}/` or from {url}/<file> with any HTTP client; then run the command again: they are "
        "converted once and the conversion is reused."
    )


def _fetch(url: str, dest: Path, show_progress: bool, always: bool = False) -> None:
    """Download ``url`` to ``dest`` through ``dest.part``, resuming a partial download with a Range request
    (a server that ignores the range gets the whole file again)."""
    from tqdm import tqdm

    if dest.is_file() and not always:
        return
    part = dest.with_name(dest.name + ".part")
    have = part.stat().st_size if part.is_file() else 0
    request = urllib.request.Request(url, headers={"Range": f"bytes={have}-"} if have else {})
    try:
        response = urllib.request.urlopen(request, timeout=60)
    except urllib.error.HTTPError as err:
        if err.code != 416:  # 416: the range starts at the end: the part is complete or stale
            raise
        part.unlink(missing_ok=True)
        have, response = 0, urllib.request.urlopen(url, timeout=60)
    with response:
        resumed = response.status == 206
        if not resumed:
            have = 0
        length = response.headers.get("Content-Length")
        total = have + int(length) if length is not None else None
        with (
            part.open("ab" if resumed else "wb") as f,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                desc=dest.name,
                disable=not show_progress,
            ) as bar,
        ):
            while chunk := response.read(1 << 20):
                f.write(chunk)
                bar.update(len(chunk))
    if total is not None and part.stat().st_size != total:
        raise OSError(
            f"{url}: got {part.stat().st_size} of {total} bytes (connection dropped); run again to resume"
        )
    os.replace(part, dest)


def format_table() -> str:
    """The published models with the official README's accuracies; ``*``: converted, in the cache."""
    cols = list(CATEGORIES)
    width = max(len(c) for c in cols) + 1
    lines = [
        "Published SimCLRv2 models (google-research/simclr): ImageNet top-1 % from the official README "
        "(pretrained: its linear-eval head; distill_*: not in that table).",
        "Reference them as zoo:CATEGORY/ARCH (zoo:ARCH = pretrained). "
        f"* = converted in {cache_dir() / 'zoo'}",
        "",
        f"{'arch':<12} {'params':>7} " + " ".join(f"{c:>{width}}" for c in cols),
    ]
    for arch in OFFICIAL_BACKBONES:
        cells = []
        for category in cols:
            acc = ACCURACY[category][arch]
            text = "-" if acc is None else f"{acc:.1f}"
            cells.append(f"{text + ('*' if converted_path(category, arch).is_file() else ''):>{width}}")
        lines.append(f"{arch:<12} {PARAMS_M[arch]:>6}M " + " ".join(cells))
    return "\n".join(lines)
