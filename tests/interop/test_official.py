"""Names: every variable the official code creates, for all 13 released architectures, maps to our models.

``data/official_names.json.gz`` holds the names and shapes recorded once by running the official code
(google-research/simclr; see its ``about`` entry): TF1 ``resnet.py`` + ``model_util.py`` names with their
``_N`` suffixes, TF2 object paths, optimizer slots, a SavedModel's positional keys and its object graph.
No TensorFlow is needed here: the converter plans from names and shapes alone.
"""

from __future__ import annotations

import base64
import gzip
import json
from pathlib import Path

import pytest

from simclrv2.interop.convert import CATEGORIES, ConversionError, plan_conversion, target_module
from simclrv2.interop.official import TF2_SUFFIX, ArchSpec, expected_slots
from simclrv2.models.registry import OFFICIAL_BACKBONES

DATA = json.loads(gzip.decompress((Path(__file__).parent / "data" / "official_names.json.gz").read_bytes()))
ARCHS = DATA["archs"]

# What each category's classifier reads (SPEC §2; the paper and the official README): h or head layer 1.
EXPECTED_FROM_LAYER = {"finetuned_1pct": 1, "finetuned_10pct": 1, "finetuned_100pct": 0, "supervised": 0}


def _tf1(arch: str) -> dict[str, tuple[int, ...]]:
    return {n: tuple(s) for n, s in ARCHS[arch]["tf1"]}


def _with_ema(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, ...]]:
    """The released TF1 files also hold ``ema_model/`` copies of the network (SPEC §8; the public code does
    not create them, so they are added here by that rule)."""
    ema = {
        f"ema_model/{n}": s
        for n, s in shapes.items()
        if n.startswith(("base_model/", "head_contrastive/")) and not n.endswith("/Momentum")
    }
    return {**shapes, **ema}


_TARGETS: dict[tuple, dict[str, tuple[int, ...]]] = {}


def _check_plan(plan, shapes) -> None:
    """Every name is mapped, dropped (head layers the classifier does not keep) or skipped by a rule, and
    the mapped tensors are exactly the target model's state dict, shapes included."""
    used = {key for _, key, _ in plan.items} | set(plan.dropped)
    assert len(used) + sum(plan.skipped.values()) == len(shapes)
    target = (plan.source.spec, plan.output_format, plan.from_layer)
    if target not in _TARGETS:  # the same model for several categories: build it once
        state = target_module(plan).state_dict()
        _TARGETS[target] = {
            k: tuple(v.shape) for k, v in state.items() if not k.endswith("num_batches_tracked")
        }
    assert {out: slot.shape for out, _, slot in plan.items} == _TARGETS[target]


def test_the_recorded_lists_cover_the_13_released_architectures():
    assert sorted(ARCHS) == sorted(OFFICIAL_BACKBONES)
    assert "official" in DATA["about"]


@pytest.mark.parametrize("arch", OFFICIAL_BACKBONES)
def test_our_name_table_is_the_official_one(arch):
    """Name for name and shape for shape, TF1 and TF2, generated from our modules."""
    spec = ArchSpec(arch, head_layers=3, head_dim=128, num_classes=1000)
    slots = expected_slots(spec)
    tf1 = {n: s for n, s in _tf1(arch).items() if not n.endswith("/Momentum") and n != "global_step"}
    assert {s.tf1: s.tf_shape() for s in slots} == tf1
    tf2 = {
        n[len("model/") : -len(TF2_SUFFIX)]: tuple(s)
        for n, s in ARCHS[arch]["tf2_checkpoint"]
        if n.startswith("model/")
    }
    assert {s.tf2: s.tf_shape() for s in slots} == tf2


@pytest.mark.parametrize("arch", OFFICIAL_BACKBONES)
def test_every_tf1_name_maps_for_every_category_and_head_layout(arch):
    full = _with_ema(_tf1(arch))
    layouts = {
        "as released": full,
        "no supervised head": {n: s for n, s in full.items() if "head_supervised" not in n},
        "no projection head": {n: s for n, s in full.items() if "head_contrastive" not in n},
    }
    for layout, shapes in layouts.items():
        for category in CATEGORIES:
            for ema in (False, True) if category in ("pretrained", "finetuned_10pct") else (False,):
                if layout == "no supervised head" and category != "pretrained":
                    with pytest.raises(ConversionError, match="no supervised head"):
                        plan_conversion(shapes, None, f"/gcs/{category}/{arch}", ema=ema)
                    continue
                if layout == "no projection head" and category in ("finetuned_1pct", "finetuned_10pct"):
                    with pytest.raises(ConversionError, match="--from-layer 1: the projection head has 0"):
                        plan_conversion(shapes, None, f"/gcs/{category}/{arch}", ema=ema)
                    continue
                plan = plan_conversion(shapes, None, f"/gcs/{category}/{arch}", ema=ema)
                _check_plan(plan, shapes)
                assert plan.source.spec.backbone == arch
                if category == "pretrained":
                    assert plan.output_format == "pretrain"
                else:
                    assert plan.output_format == "classifier"
                    assert plan.from_layer == EXPECTED_FROM_LAYER.get(category, 0)
                taken = {key for _, key, _ in plan.items if "head_supervised" not in key}
                assert all(k.startswith("ema_model/") == ema for k in taken)


@pytest.mark.parametrize("arch", OFFICIAL_BACKBONES)
def test_every_tf2_name_maps(arch):
    entry = ARCHS[arch]
    listings = {"checkpoint": entry["tf2_checkpoint"]}
    for extra in ("tf2_checkpoint_with_optimizer", "tf2_saved_model"):
        if extra in entry:
            listings[extra] = entry[extra]
    graph = entry.get("tf2_saved_model_object_graph")
    for which, listing in listings.items():
        shapes = {n: tuple(s) for n, s in listing}
        if which == "tf2_saved_model" and graph is None:
            continue  # positional keys: only mappable through the object graph (recorded for r50_1x_sk1)
        og = base64.b64decode(graph) if which == "tf2_saved_model" else None
        for category in ("pretrained", "finetuned_10pct", "finetuned_100pct"):
            plan = plan_conversion(shapes, og, f"/gcs/{category}/{arch}")
            _check_plan(plan, shapes)
            assert plan.source.flavour == "tf2" and plan.source.spec.backbone == arch


def test_the_saved_model_keys_are_positional_and_resolve_through_the_object_graph():
    entry = ARCHS["r50_1x_sk1"]
    shapes = {n: tuple(s) for n, s in entry["tf2_saved_model"]}
    assert any(n.startswith("trainable_variables_list/") for n in shapes)
    plan = plan_conversion(
        shapes, base64.b64decode(entry["tf2_saved_model_object_graph"]), "/x/pretrained/r50"
    )
    stem = next(key for out, key, _ in plan.items if out == "model.backbone.stem.conv1.weight")
    assert stem.startswith("trainable_variables_list/")  # the first trainable variable
    mean = next(key for out, key, _ in plan.items if out == "model.backbone.stem.bn1.running_mean")
    assert "/variables/" in mean  # non-trainables sit under a layer's `variables` list


def test_a_missing_or_an_unknown_name_is_refused_listing_it():
    shapes = _tf1("r50_1x_sk0")
    gone = dict(shapes)
    del gone["base_model/batch_normalization_7/moving_variance"]
    with pytest.raises(
        ConversionError, match=r"1 expected tensors missing.*batch_normalization_7/moving_var"
    ):
        plan_conversion(gone, None, "/x/finetuned_1pct/r50_1x_sk0")
    extra = {**shapes, "base_model/my_extra_layer/kernel": (3, 3)}
    with pytest.raises(
        ConversionError, match=r"1 tensors that map to nothing: base_model/my_extra_layer/kernel"
    ):
        plan_conversion(extra, None, "/x/finetuned_1pct/r50_1x_sk0")
    bad = {**shapes, "base_model/conv2d_3/kernel": (1, 1, 64, 255)}
    with pytest.raises(ConversionError, match=r"conv2d_3/kernel has shape \[1, 1, 64, 255\]"):
        plan_conversion(bad, None, "/x/finetuned_1pct/r50_1x_sk0")
    with pytest.raises(ConversionError, match="drop --ema"):
        plan_conversion(shapes, None, "/x/finetuned_1pct/r50_1x_sk0", ema=True)


def test_an_unknown_category_needs_to_be_named():
    shapes = _tf1("r50_1x_sk0")
    with pytest.raises(ConversionError, match="pass --category"):
        plan_conversion(shapes, None, "/somewhere/my_download")
    plan = plan_conversion(shapes, None, "/somewhere/my_download", from_layer=1)
    assert plan.output_format == "classifier" and plan.from_layer == 1 and plan.stage == "finetune"
    only_backbone = {n: s for n, s in shapes.items() if n.startswith("base_model/")}
    assert plan_conversion(only_backbone, None, "/somewhere").output_format == "pretrain"
