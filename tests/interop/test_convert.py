"""Numbers: TensorFlow computing the official network vs the converted PyTorch model, and the converted
checkpoints through the stages (finetune, distill --teacher, predict, export).

The TensorFlow side is ``tf_reference.py``: TensorFlow ops following the official ``tf2/resnet.py`` and
``tf2/model.py`` function by function (its docstring lists them), with random weights and random BN
statistics, saved by TF's own ``tf.compat.v1.train.Saver`` (TF1 names) and ``tf.train.Checkpoint`` (TF2
object paths) and checked name for name against the lists recorded from the official code. Inputs are small
(72 px: odd feature-map sizes before the stride-2 stages, the asymmetric SAME max-pool on an even one) to keep
the tests fast; the 224 px check is run by hand (tests/interop/README.md).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from parity import TOLERANCE, Written, images, quiet, rel  # beside this file

from simclrv2.checkpoint import load_checkpoint
from simclrv2.cli import main
from simclrv2.engine.finetune import build_model_from_checkpoint
from simclrv2.interop.convert import ConversionError, convert_checkpoint
from simclrv2.interop.official import TF2_SUFFIX
from simclrv2.models import FineTuneModel, ProjectionHead, create_backbone


@pytest.mark.parametrize(
    ("arch", "flavour", "category", "from_layer"),
    [
        ("r50_1x_sk0", "tf1", "pretrained", 0),
        ("r50_1x_sk0", "tf2", "finetuned_10pct", 1),
        ("r50_1x_sk1", "tf1", "finetuned_1pct", 1),
        ("r50_1x_sk1", "tf2", "pretrained", 0),
    ],
)
def test_converted_model_computes_what_tensorflow_computes(
    written, tmp_path, arch, flavour, category, from_layer
):
    errors = written[arch].compare(tmp_path, flavour, category, from_layer)
    assert max(errors.values()) < TOLERANCE, errors
    assert np.abs(written[arch].theirs["logits"][from_layer]).max() > 1.0  # not a trivially small output


def test_width_2(tf, tmp_path):
    written = Written(tf, tmp_path / "tf", "r50_2x_sk0", flavours=("tf2",))
    errors = written.compare(tmp_path, "tf2", "finetuned_1pct", 1)
    assert max(errors.values()) < TOLERANCE, errors


def test_pytorch_max_pool_padding_would_break_parity(written, tmp_path):
    """The control: the same weights with PyTorch's symmetric stem max-pool padding miss by far more."""
    ref = written["r50_1x_sk0"]
    quiet(ref.tf1, tmp_path / "c.pt", category="finetuned_100pct")
    ckpt = load_checkpoint(tmp_path / "c.pt")
    backbone = create_backbone(ckpt["arch"]["backbone"])  # tf_same_pool off
    model = FineTuneModel(backbone, ProjectionHead(backbone.num_features, 3, 128), 0, 1000)
    model.load_state_dict(ckpt["model"])
    images = torch.from_numpy(ref.x).permute(0, 3, 1, 2).contiguous()
    with torch.no_grad():
        logits = model.eval()(images)
    miss = rel(logits, ref.theirs["logits"][0])
    print(f"PyTorch max-pool padding: logits off by {miss:.3g} relative")
    assert miss > 100 * TOLERANCE


def test_ema_copies_and_the_saved_model_layout(tf, tmp_path):
    """--ema takes the ema_model/ copies; a SavedModel (positional trainable_variables_list/N keys, as
    tf2/run.py's build_saved_model writes it) converts through its object graph. The mechanics do not depend
    on the width: a 0.25x network keeps this test fast."""
    from tf_reference import Model

    live, ema = Model(50, 0.25, 0.0625, 1000, seed=0), Model(50, 0.25, 0.0625, 1000, seed=7)
    x = images()
    root = tmp_path / "finetuned_1pct" / "r50_0.25x_sk1"
    root.mkdir(parents=True)
    var_list = {
        **live.names.tf1,
        **{f"ema_model/{n}": v for n, v in ema.names.tf1.items() if "supervised" not in n},
    }
    tf.compat.v1.train.Saver(var_list=var_list).save(None, str(root / "model.ckpt-5"))
    plan = quiet(root, tmp_path / "c.pt", ema=True)
    assert any("no EMA copy" in n for n in plan.notes)  # the linear head: live weights
    assert plan.skipped["live weights (--ema given)"] > 0
    model = build_model_from_checkpoint(load_checkpoint(tmp_path / "c.pt")).eval()
    with torch.no_grad():
        h = model.backbone(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    assert rel(h, ema(tf.constant(x))["h"]) < TOLERANCE

    class SavedModule(tf.Module):  # the attributes of tf2/run.py's build_saved_model module
        def __init__(self, model):
            super().__init__()
            self.model = model
            self.trainable_variables_list = list(model.trainable_variables)  # BN statistics are not

    saved = tmp_path / "sm" / "saved_model"
    tf.saved_model.save(SavedModule(live), str(saved))
    keys = [n for n, _ in tf.train.list_variables(str(saved / "variables" / "variables"))]
    assert any(k.startswith("trainable_variables_list/") for k in keys)
    plan = quiet(saved.parent, tmp_path / "sm.pt", category="finetuned_1pct")
    assert plan.source.flavour == "tf2" and plan.from_layer == 1
    model = build_model_from_checkpoint(load_checkpoint(tmp_path / "sm.pt")).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous())
    assert rel(logits, live(tf.constant(x))["logits"][1]) < TOLERANCE


def test_cli_convert_summary_and_refusals(written, tmp_path, capsys):
    src = tmp_path / "download"
    src.mkdir()
    for f in written["r50_1x_sk0"].tf1.iterdir():
        (src / f.name).write_bytes(f.read_bytes())
    prefix = str(src / "model.ckpt-1000")
    out = tmp_path / "out.pt"
    assert main(["convert", str(src), "--output", str(out)]) == 2  # no category in the path
    assert "pass --category" in capsys.readouterr().err
    assert main(["convert", prefix, "--output", str(out), "--category", "finetuned_10pct"]) == 0
    printed = capsys.readouterr().out
    assert "architecture: r50_1x_sk0" in printed and "1000 classes on head layer 1" in printed
    assert "skipped: 1 step counters" in printed and f"wrote {out}" in printed
    assert main(["convert", prefix, "--output", str(out), "--category", "finetuned_10pct"]) == 2
    assert "already exists" in capsys.readouterr().err
    ckpt = load_checkpoint(out, stage="finetune")
    assert len(ckpt["classes"]) == 1000 and ckpt["classes"][0] == "tench"
    assert (ckpt["image_size"], ckpt["load_size"]) == (224, 256)
    data = Path(prefix + ".data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0x40
    data.write_bytes(bytes(raw))
    assert main(["convert", prefix, "--output", str(tmp_path / "x.pt"), "--category", "finetuned_10pct"]) == 2
    assert "checksum mismatch" in capsys.readouterr().err and not (tmp_path / "x.pt").exists()


def test_not_a_simclr_checkpoint(tf, tmp_path):
    prefix = tf.train.Checkpoint(w=tf.Variable(np.ones(3, np.float32))).write(str(tmp_path / "ckpt"))
    with pytest.raises(ConversionError, match="not a SimCLRv2 checkpoint"):
        convert_checkpoint(prefix, tmp_path / "o.pt", category="pretrained", say=lambda _: None)
    assert f"w{TF2_SUFFIX}" in [n for n, _ in tf.train.list_variables(prefix)]
