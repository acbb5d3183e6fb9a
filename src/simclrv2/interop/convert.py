"""Official SimCLRv2 TensorFlow checkpoints -> our checkpoints (``simclrv2 convert``; SPEC §1, §2, §8).

1. :func:`inspect_names` reads what a checkpoint holds from its names and shapes alone: TF1 (``base_model/
   conv2d_N/kernel``) or TF2 (object paths, resolved through the checkpoint's object graph, so that a
   SavedModel's positional ``trainable_variables_list/N`` keys map too); depth, width and SK; the
   projection head; the supervised head; EMA copies; optimizer slots.
2. :func:`plan_conversion` maps every name to one of our keys or to a skip rule (optimizer slots, step
   counters, EMA copies unless ``ema``, the MoCo-style memory) and refuses, listing them, when any name is
   left over or any expected one is missing. It decides the output: the pretraining format for
   ``pretrained`` (finetune --pretrained, linear-eval, knn), the classifier format for ``finetuned_*``,
   ``supervised`` and ``distill_*`` (predict, export, distill --teacher, load_classifier).
3. :func:`convert_checkpoint` streams the tensors one at a time into the output state dict (checksums
   verified by the reader), checks it against the target model built on the ``meta`` device (no second
   copy of the weights) and writes the checkpoint atomically.

The converted model computes what TensorFlow computes: TF's fixed padding of strided convolutions equals
PyTorch's symmetric padding for the odd kernels used, the stem max-pool is TF's "SAME" (``tf_same_pool``),
BN epsilon is TF's 1e-5 (the official graphs use unfused BN, which keeps it exactly), inputs are RGB in
[0, 1] without mean/std, and evaluation is the centre crop 0.875 at 224 px (shorter side 256 -> 224).
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from simclrv2.checkpoint import CHECKPOINT_FORMAT, CheckpointError, atomic_save
from simclrv2.config import DataConfig, ModelConfig, PretrainConfig, to_dict
from simclrv2.interop.official import (
    TF2_SUFFIX,
    ArchSpec,
    Slot,
    backbone_name,
    expected_slots,
    feature_dim,
    meta_modules,
)
from simclrv2.interop.tensorbundle import TensorBundle, _fields
from simclrv2.models import Classifier, FineTuneModel, ProjectionHead, SimCLRModel, create_backbone
from simclrv2.models.resnet import BLOCKS_PER_STAGE

__all__ = [
    "CATEGORIES",
    "ConversionError",
    "ConversionPlan",
    "SourceInfo",
    "convert_checkpoint",
    "inspect_names",
    "plan_conversion",
]

CATEGORIES = (
    "pretrained",
    "finetuned_1pct",
    "finetuned_10pct",
    "finetuned_100pct",
    "supervised",
    "distill_1pct",
    "distill_10pct",
)
# Which head output the released classifiers read (k of SPEC §2), when the shapes cannot tell (a hidden head
# layer keeps h's width): the authors fine-tune 1%/10% from head layer 1 and 100% from h (paper §3, the
# official README; google-research/simclr issue #109). Supervised models and distilled students have no
# projection head in their forward pass (SPEC §6), so their classifier reads h.
DEFAULT_FROM_LAYER = {
    "finetuned_1pct": 1,
    "finetuned_10pct": 1,
    "finetuned_100pct": 0,
    "supervised": 0,
    "distill_1pct": 0,
    "distill_10pct": 0,
}
STAGES = {"supervised": "supervised", "distill_1pct": "distill", "distill_10pct": "distill"}
IMAGE_SIZE, LOAD_SIZE = 224, 256  # evaluation: shorter side 256, centre crop 0.875 -> 224 (SPEC §5)

# Names that are not weights of the network: skipped, and counted in the summary.
_SKIP_RULES: tuple[tuple[str, re.Pattern[str]], ...] = (
    ("optimizer slots", re.compile(r"(/Momentum$|/\.OPTIMIZER_SLOT/|^optimizer/|/LARS|/Adam(_1)?$)")),
    ("step counters", re.compile(r"^(global_step|save_counter|step)(/|$)")),
    ("object graph", re.compile(r"^_CHECKPOINTABLE_OBJECT_GRAPH$")),
    ("memory queue", re.compile(r"memory")),
)


class ConversionError(CheckpointError):
    """A checkpoint that cannot be converted; the message names the file, the names and the fix."""


@dataclass
class SourceInfo:
    """What :func:`inspect_names` found in a checkpoint."""

    path: str
    flavour: str  # "tf1" or "tf2"
    spec: ArchSpec
    supervised_in_dim: int | None
    has_ema: bool
    tf2_root: str = ""  # "model/" or "" (the Keras model at the root)
    lookup: dict[str, str] = field(default_factory=dict)  # slot name (TF1 name / TF2 path) -> bundle key


@dataclass
class ConversionPlan:
    """Every tensor to write (our key <- bundle key), what was skipped, and the output's description."""

    source: SourceInfo
    category: str | None
    output_format: str  # "pretrain" or "classifier"
    stage: str
    from_layer: int
    items: list[tuple[str, str, Slot]]  # (our key, bundle key, slot)
    skipped: Counter[str]
    dropped: list[str]
    notes: list[str]

    def summary(self) -> str:
        s, spec = self.source, self.source.spec
        depth, width, sk = spec.depth_width_sk
        head = (
            f"{spec.head_layers}-layer projection head (out {spec.head_dim})" if spec.head_layers else "none"
        )
        lines = [
            f"source: {s.path} ({s.flavour.upper()} checkpoint)",
            f"architecture: {spec.backbone} (ResNet-{depth}, width {width:g}x, "
            + (f"SK {sk:g} + ResNet-D" if sk else "no SK")
            + (", small-image stem" if spec.small_images else "")
            + ")",
            f"projection head: {head}",
            "supervised head: "
            + (
                f"{spec.num_classes} classes on "
                + ("h" if self.from_layer == 0 else f"head layer {self.from_layer}")
                if spec.num_classes
                else "none"
            ),
            f"mapped: {len(self.items)} tensors" + (" (EMA copies)" if "EMA" in " ".join(self.notes) else ""),
        ]
        if self.dropped:
            lines.append(
                f"not part of the {self.output_format} model: {len(self.dropped)} tensors (head layers)"
            )
        if self.skipped:
            lines.append("skipped: " + ", ".join(f"{n} {what}" for what, n in sorted(self.skipped.items())))
        lines += [f"note: {n}" for n in self.notes]
        what = "pretraining" if self.output_format == "pretrain" else f"classifier ({self.stage})"
        lines.append(f"output: {what} checkpoint" + (f" [{self.category}]" if self.category else ""))
        return "\n".join(lines)


# --- what a checkpoint holds -------------------------------------------------------------------------------


class _Tree:
    """Names as a tree: TF1 names split at '/', TF2 keys through the object graph (child local names)."""

    def __init__(self) -> None:
        self.children: dict[str, _Tree] = {}
        self.key: str | None = None

    def find(self, path: str) -> _Tree | None:
        node: _Tree | None = self
        for part in path.split("/"):
            node = node.children.get(part) if node is not None else None
        return node

    def key_of(self, path: str) -> str | None:
        node = self.find(path)
        return node.key if node is not None else None

    @staticmethod
    def from_names(names: list[str], suffix: str = "") -> _Tree:
        root = _Tree()
        for name in names:
            path = name[: -len(suffix)] if suffix and name.endswith(suffix) else name
            node = root
            for part in path.split("/"):
                node = node.children.setdefault(part, _Tree())
            node.key = name
        return root

    @staticmethod
    def from_object_graph(graph: bytes) -> _Tree:
        """TF's ``TrackableObjectGraph``: nodes (field 1) with children (field 1: node_id, local_name) and
        attributes (field 2: name, full_name, checkpoint_key); node 0 is the root."""
        raw = _fields(graph, "_CHECKPOINTABLE_OBJECT_GRAPH").get(1, [])
        nodes = [_Tree() for _ in raw]
        for tree, data in zip(nodes, raw, strict=True):
            f = _fields(data, "object graph node")
            for child in f.get(1, []):
                c = _fields(child, "object graph reference")
                node_id, name = c.get(1, [0])[-1], c.get(2, [b""])[-1].decode()
                if node_id < len(nodes):
                    tree.children.setdefault(name, nodes[node_id])
            for attr in f.get(2, []):
                a = _fields(attr, "object graph attribute")
                if a.get(1, [b""])[-1] == b"VARIABLE_VALUE":
                    tree.key = a.get(3, [b""])[-1].decode()
        return nodes[0] if nodes else _Tree()


def _stem_kind(stem: tuple[int, ...], second: tuple[int, ...] | None) -> tuple[bool, bool, float]:
    """(small_images, deep stem, width) from the first conv's HWIO shape and the second conv's."""
    if len(stem) != 4 or stem[2] != 3:
        raise ConversionError(
            f"the first convolution has shape {list(stem)}, not [k, k, 3, C] of an RGB stem"
        )
    channels = stem[3]
    if stem[0] == 7:
        return False, False, channels / 64
    deep = second is not None and tuple(second) == (3, 3, channels, channels)
    return (not deep), deep, channels / (32 if deep else 64)


def _candidates(small: bool, deep: bool) -> list[tuple[int, bool]]:
    sks = [True] if deep else [False] if not small else [False, True]
    return [(depth, sk) for depth in BLOCKS_PER_STAGE for sk in sks]


def inspect_names(
    shapes: Mapping[str, tuple[int, ...]],
    object_graph: bytes | None = None,
    path: str = "",
    ema: bool = False,
) -> SourceInfo:
    """Detect flavour, architecture and heads from names and shapes (plus the TF2 object graph)."""
    tf2 = any(n.endswith(TF2_SUFFIX) for n in shapes)
    if tf2:
        tree = (
            _Tree.from_object_graph(object_graph)
            if object_graph
            else _Tree.from_names(list(shapes), TF2_SUFFIX)
        )
        root = "model/" if tree.find("model/resnet_model") is not None else ""
        if tree.find(f"{root}resnet_model") is None:
            raise ConversionError(
                f"{path}: a TF2 checkpoint without the official model (no model/resnet_model object): "
                "not a SimCLRv2 checkpoint"
            )
    else:
        tree = _Tree.from_names(list(shapes))
        root = "ema_model/" if ema else ""
    first = "resnet_model/initial_conv_relu_max_pool/0/conv2d/kernel" if tf2 else "base_model/conv2d/kernel"
    second = (
        "resnet_model/initial_conv_relu_max_pool/2/conv2d/kernel" if tf2 else "base_model/conv2d_1/kernel"
    )

    def shape(slot_name: str) -> tuple[int, ...] | None:
        key = tree.key_of(root + slot_name)
        return tuple(shapes[key]) if key is not None and key in shapes else None

    stem = shape(first)
    if stem is None:
        found = "ema_model/base_model/conv2d/kernel" if ema else first
        raise ConversionError(
            f"{path}: no {found!r}: not an official SimCLRv2 checkpoint"
            + (" with EMA copies (drop --ema)" if ema else "")
        )
    small, deep, width = _stem_kind(stem, shape(second))
    spec = _detect_backbone(small, deep, width, tree, root, tf2, shape, path)
    head_layers, head_dim = _detect_head(shape, tf2)
    sup = shape(
        "supervised_head/linear_layer/dense/kernel" if tf2 else "head_supervised/linear_layer/dense/kernel"
    )
    if sup is None and ema:  # the released files may keep the linear head only outside ema_model/
        sup = tuple(shapes.get("head_supervised/linear_layer/dense/kernel", ())) or None
    spec = ArchSpec(spec.backbone, spec.small_images, head_layers, head_dim, sup[1] if sup else 0)
    info = SourceInfo(
        path=path,
        flavour="tf2" if tf2 else "tf1",
        spec=spec,
        supervised_in_dim=sup[0] if sup else None,
        has_ema=any(n.startswith("ema_model/") for n in shapes),
        tf2_root=root if tf2 else "",
    )
    info.lookup = {}
    for slot in expected_slots(spec, info.supervised_in_dim):
        name = slot.tf2 if tf2 else slot.tf1
        key = tree.key_of(root + name)
        if key is None and ema and slot.key.startswith("supervised."):
            key = tree.key_of(name)  # EMA requested, but the linear head has no EMA copy
        if key is not None:
            info.lookup[name] = key
    return info


def _detect_backbone(
    small: bool, deep: bool, width: float, tree: _Tree, root: str, tf2: bool, shape: Callable, path: str
) -> ArchSpec:
    """The (depth, SK) with the most of its expected names present, the fewest expected on a tie: deeper
    nets of a family hold the names of shallower ones, and an incomplete file still tells its architecture
    (the missing names are then listed by the plan)."""
    best: tuple[int, int, ArchSpec] | None = None
    for depth, sk in _candidates(small, deep):
        spec = ArchSpec(backbone_name(depth, width, sk), small_images=small, head_layers=0)
        names = [(s.tf2 if tf2 else s.tf1) for s in _backbone_slots_cached(depth, sk, small)]
        found = sum(tree.find(root + n) is not None for n in names)
        if found >= 0.5 * len(names) and (best is None or (found, -len(names)) > (best[0], best[1])):
            best = (found, -len(names), spec)
    if best is None:
        raise ConversionError(
            f"{path}: the backbone's names fit none of the ResNet depths {sorted(BLOCKS_PER_STAGE)} "
            f"(stem {'3x3 deep' if deep else '3x3 small-image' if small else '7x7'}, width {width:g}): "
            "not an official SimCLRv2 ResNet, or a truncated index"
        )
    return best[2]


_BACKBONE_CACHE: dict[tuple[int, bool, bool], list[Slot]] = {}


def _backbone_slots_cached(depth: int, sk: bool, small: bool) -> list[Slot]:
    """Names of a width-1 backbone (names do not depend on the width)."""
    key = (depth, sk, small)
    if key not in _BACKBONE_CACHE:
        spec = ArchSpec(backbone_name(depth, 1, sk), small_images=small, head_layers=0)
        _BACKBONE_CACHE[key] = list(expected_slots(spec))
    return _BACKBONE_CACHE[key]


def _detect_head(shape: Callable, tf2: bool) -> tuple[int, int]:
    """(layers, output dim) of the contrastive projection head; (0, 0) when there is none."""

    def kernel(j: int, linear: bool = False) -> tuple[int, ...] | None:
        if tf2:
            return shape(f"_projection_head/linear_layers/{j}/dense/kernel")
        return shape(f"head_contrastive/{'l_0' if linear else f'nl_{j}'}/dense/kernel")

    if not tf2 and kernel(0, linear=True) is not None:
        return 1, kernel(0, linear=True)[1]  # type: ignore[index]
    layers = 0
    while kernel(layers) is not None:
        layers += 1
    if layers == 0:
        return 0, 0
    return layers, kernel(layers - 1)[1]  # type: ignore[index]


# --- the plan ---------------------------------------------------------------------------------------------


def category_from_path(path: str | Path) -> str | None:
    """The published category named in a path (``.../finetuned_10pct/r50_1x_sk0/...``), if any."""
    parts = Path(path).parts
    for category in CATEGORIES:
        if category in parts:
            return category
    return None


def plan_conversion(
    shapes: Mapping[str, tuple[int, ...]],
    object_graph: bytes | None = None,
    path: str = "",
    category: str | None = None,
    from_layer: int | None = None,
    ema: bool = False,
) -> ConversionPlan:
    """Map every name of a checkpoint (names and shapes only) or refuse, listing what does not fit."""
    if category is not None and category not in CATEGORIES:
        raise ConversionError(f"category {category!r}: expected one of {', '.join(CATEGORIES)}")
    category = category or category_from_path(path)
    info = inspect_names(shapes, object_graph, path, ema)
    spec = info.spec
    output_format, stage, k = _output_kind(info, category, from_layer, path)
    slots = expected_slots(spec, info.supervised_in_dim)
    tf2 = info.flavour == "tf2"
    items, dropped, missing, used, notes = [], [], [], set(), []
    for slot in slots:
        name = slot.tf2 if tf2 else slot.tf1
        key = info.lookup.get(name)
        if key is None:
            missing.append(("ema_model/" if ema and not slot.key.startswith("supervised.") else "") + name)
            continue
        used.add(key)
        if tuple(shapes[key]) != slot.tf_shape():
            missing.append(f"{key} has shape {list(shapes[key])}, expected {list(slot.tf_shape())}")
            continue
        out = _output_key(slot.key, output_format, k)
        if out is None:
            dropped.append(key)
        else:
            items.append((out, key, slot))
    last = slots[-1].tf2 if tf2 else slots[-1].tf1
    if (
        ema
        and slots[-1].key.startswith("supervised.")
        and not info.lookup.get(last, "").startswith("ema_model/")
    ):
        notes.append("the supervised head has no EMA copy: its live weights were used")
    if ema:
        notes.append("weights from the EMA copies (ema_model/...)")
    skipped: Counter[str] = Counter()
    leftover = []
    for name in shapes:
        if name in used:
            continue
        rule = next((what for what, pattern in _SKIP_RULES if pattern.search(name)), None)
        if rule is None and not tf2 and (name.startswith("ema_model/") != ema):
            rule = "EMA copies (ema_model/; --ema takes them)" if not ema else "live weights (--ema given)"
        if rule is None:
            leftover.append(f"{name} {list(shapes[name])}")
        else:
            skipped[rule] += 1
    _refuse_if(path, missing, leftover, spec)
    return ConversionPlan(info, category, output_format, stage, k, items, skipped, dropped, notes)


def _refuse_if(path: str, missing: list[str], leftover: list[str], spec: ArchSpec) -> None:
    problems = []
    if missing:
        problems.append(f"{len(missing)} expected tensors missing or mis-shaped: {_first(missing)}")
    if leftover:
        problems.append(f"{len(leftover)} tensors that map to nothing: {_first(leftover)}")
    if problems:
        raise ConversionError(
            f"{path}: cannot convert as {spec.backbone} ({'; '.join(problems)}). Nothing was written: the "
            "checkpoint is not one of the official SimCLRv2 layouts (or is incomplete)."
        )


def _first(items: list[str], n: int = 10) -> str:
    return ", ".join(items[:n]) + (f", ... ({len(items) - n} more)" if len(items) > n else "")


def _output_kind(
    info: SourceInfo, category: str | None, from_layer: int | None, path: str
) -> tuple[str, str, int]:
    """(format, stage, k): what to write, and which head output the classifier reads."""
    spec = info.spec
    if category == "pretrained" or (category is None and from_layer is None and not spec.num_classes):
        return "pretrain", "pretrain", 0
    if not spec.num_classes:
        raise ConversionError(
            f"{path}: no supervised head (head_supervised/...): there is no classifier to convert; "
            "convert it as --category pretrained"
        )
    if category is None and from_layer is None:
        raise ConversionError(
            f"{path}: a checkpoint with a supervised head, but which published model it is cannot be told "
            f"from its path: pass --category ({', '.join(CATEGORIES)}), or --from-layer K (0: the "
            "classifier reads h, 1: head layer 1) for a classifier"
        )
    k = from_layer if from_layer is not None else DEFAULT_FROM_LAYER[str(category)]
    if k < 0 or k > spec.head_layers:
        raise ConversionError(f"{path}: --from-layer {k}: the projection head has {spec.head_layers} layers")
    head_out = [feature_dim(spec)] + [
        spec.head_dim if j == spec.head_layers - 1 else feature_dim(spec) for j in range(spec.head_layers)
    ]
    if info.supervised_in_dim != head_out[k]:
        raise ConversionError(
            f"{path}: the supervised head reads {info.supervised_in_dim} features, but "
            f"{'h' if k == 0 else f'head layer {k}'} has {head_out[k]}: choose another --from-layer"
        )
    stage = STAGES.get(str(category), "finetune")
    return "classifier", stage, k


def _output_key(key: str, output_format: str, k: int) -> str | None:
    """Our key in the output, or None for head layers the classifier does not keep."""
    if output_format == "pretrain":
        if key.startswith("supervised."):
            return "classifier." + key[len("supervised.") :]  # the linear-eval head = the online probe
        return "model." + key
    if key.startswith("supervised."):
        return "classifier." + key[len("supervised.") :]
    m = re.match(r"head\.layers\.(\d+)\.", key)
    if m is not None and int(m.group(1)) >= k:
        return None
    return key


# --- writing ----------------------------------------------------------------------------------------------


class _PretrainLayout(nn.Module):
    """The state-dict layout of a pretraining checkpoint (``model.*`` + the online probe ``classifier.*``)."""

    def __init__(self, model: SimCLRModel, num_classes: int) -> None:
        super().__init__()
        self.model = model
        self.classifier = Classifier(model.backbone.num_features, num_classes) if num_classes else None


def target_module(plan: ConversionPlan) -> nn.Module:
    """The module whose state dict the output holds, built on the ``meta`` device (no memory)."""
    spec = plan.source.spec
    with meta_modules():
        backbone = create_backbone(spec.backbone, spec.small_images, tf_same_pool=not spec.small_images)
        head = (
            ProjectionHead(backbone.num_features, spec.head_layers, spec.head_dim)
            if spec.head_layers
            else None
        )
        if plan.output_format == "pretrain":
            model = SimCLRModel(backbone, head or ProjectionHead(backbone.num_features, 0))
            return _PretrainLayout(model, spec.num_classes)
        return FineTuneModel(backbone, head, plan.from_layer, spec.num_classes)


def _to_torch(array: Any, slot: Slot) -> torch.Tensor:
    tensor = torch.from_numpy(array).to(torch.float32)
    if slot.layout == "conv":
        tensor = tensor.permute(3, 2, 0, 1)
    elif slot.layout == "dense":
        tensor = tensor.t()
    return tensor.contiguous()


def imagenet_classes() -> list[str]:
    """ImageNet-1k class names in label order (the sorted WordNet ids that TFDS and torchvision share),
    from torchvision's weight metadata (no download)."""
    from torchvision.models import ResNet50_Weights

    return list(ResNet50_Weights.IMAGENET1K_V1.meta["categories"])


def _arch(plan: ConversionPlan) -> dict[str, Any]:
    """The classifier checkpoint's ``arch`` (the keys of ``simclrv2.engine.finetune.model_arch``)."""
    spec = plan.source.spec
    return {
        "backbone": spec.backbone,
        "small_images": spec.small_images,
        "head_layers": spec.head_layers,
        "head_dim": spec.head_dim,
        "from_layer": plan.from_layer,
        "num_classes": spec.num_classes,
        **({} if spec.small_images else {"tf_same_pool": True}),
    }


def checkpoint_dict(plan: ConversionPlan, state: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The output checkpoint: our regular pretraining or classifier format plus ``converted_from``."""
    spec = plan.source.spec
    origin = {"path": plan.source.path, "flavour": plan.source.flavour, "category": plan.category}
    classes = imagenet_classes() if spec.num_classes == 1000 else [str(i) for i in range(spec.num_classes)]
    if plan.output_format == "pretrain":
        model = ModelConfig(
            backbone=spec.backbone,
            small_images=spec.small_images,
            head_layers=spec.head_layers,
            head_dim=spec.head_dim,
            tf_same_pool=not spec.small_images,
        )
        data = DataConfig(name="imagefolder", image_size=IMAGE_SIZE, load_size=LOAD_SIZE)
        config = to_dict(PretrainConfig(model=model, data=data))
        return {
            "format": CHECKPOINT_FORMAT,
            "stage": "pretrain",
            "config": config,
            "small_images": spec.small_images,
            "model": state,
            "step": 0,
            "knn": {},
            "classes": classes,
            "converted_from": origin,
        }
    return {
        "format": CHECKPOINT_FORMAT,
        "stage": plan.stage,
        "model": state,
        "arch": _arch(plan),
        "classes": classes,
        "image_size": IMAGE_SIZE,
        "load_size": LOAD_SIZE,
        "converted_from": origin,
    }


def convert_checkpoint(
    source: str | Path,
    output: str | Path,
    category: str | None = None,
    from_layer: int | None = None,
    ema: bool = False,
    say: Callable[[str], None] = print,
    show_progress: bool = True,
) -> ConversionPlan:
    """Convert an official TF1/TF2 checkpoint (directory, prefix, SavedModel) into ``output`` (.pt).

    The plan is made (and any refusal raised) before a tensor is read; tensors are then read one at a time
    into the output state dict, so the peak memory is one copy of the weights plus one tensor.
    """
    from tqdm import tqdm

    start = time.perf_counter()
    with TensorBundle(source) as bundle:
        graph = None
        if "_CHECKPOINTABLE_OBJECT_GRAPH" in bundle:
            graph = bytes(bundle.read("_CHECKPOINTABLE_OBJECT_GRAPH")[()])
        path = str(Path(source).expanduser())
        plan = plan_conversion(bundle.shapes(), graph, path, category, from_layer, ema)
        say(plan.summary())
        state: dict[str, torch.Tensor] = {}
        for out, key, slot in tqdm(plan.items, desc="convert", unit="tensor", disable=not show_progress):
            state[out] = _to_torch(bundle.read(key), slot)
    for name, _ in target_module(plan).named_buffers():
        if name.endswith("num_batches_tracked"):
            state[name] = torch.zeros((), dtype=torch.long)  # TF keeps no such counter
    _check_state(plan, state)
    output = Path(output)
    atomic_save(checkpoint_dict(plan, state), output)
    say(
        f"wrote {output} ({sum(t.numel() for t in state.values()) / 1e6:.1f}M values) "
        f"in {time.perf_counter() - start:.1f} s"
    )
    return plan


def _check_state(plan: ConversionPlan, state: dict[str, torch.Tensor]) -> None:
    """The state dict fits the target model exactly (keys and shapes), checked on ``meta`` (no copy)."""
    module = target_module(plan)
    try:
        module.load_state_dict(state, strict=True, assign=True)
    except RuntimeError as err:
        raise ConversionError(
            f"internal error: the converted weights do not fit {plan.source.spec.backbone}: {err}"
        ) from None
