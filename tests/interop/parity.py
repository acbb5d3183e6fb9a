"""Shared by the interop tests (not a test module): the reference networks written by TensorFlow, and the
comparison of a converted checkpoint with TensorFlow's outputs."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import numpy as np
import torch

from simclrv2.checkpoint import load_checkpoint
from simclrv2.engine.finetune import build_model_from_checkpoint
from simclrv2.interop.convert import convert_checkpoint
from simclrv2.models import FineTuneModel, ProjectionHead, create_backbone
from simclrv2.models.meta import meta_modules

TOLERANCE = 1e-4  # relative to the largest magnitude of each output
NAMES = json.loads(gzip.decompress((Path(__file__).parent / "data" / "official_names.json.gz").read_bytes()))
NAMES = NAMES["archs"]


def reference(arch: str, seed: int = 0):
    from tf_reference import Model  # beside this file (pytest puts its directory on sys.path)

    depth, width, sk = arch[1:].split("_")
    return Model(int(depth), float(width[:-1]), 0.0625 if sk == "sk1" else 0.0, 1000, seed=seed)


def images(size: int = 72, n: int = 2) -> np.ndarray:
    return np.random.default_rng(1).uniform(0, 1, (n, size, size, 3)).astype(np.float32)


def rel(ours: torch.Tensor, theirs: np.ndarray) -> float:
    return float(np.abs(ours.detach().numpy() - theirs).max() / np.abs(theirs).max())


def quiet(source: Path, output: Path, **kwargs: object):
    return convert_checkpoint(source, output, say=lambda _: None, show_progress=False, **kwargs)  # type: ignore[arg-type]


class Written:
    """One reference network: TensorFlow's outputs on fixed images, and its TF1 and TF2 checkpoints."""

    def __init__(self, tf, root: Path, arch: str, flavours: tuple[str, ...] = ("tf1", "tf2")) -> None:
        self.arch, self.model, self.x = arch, reference(arch), images()
        self.theirs = self.model(tf.constant(self.x))
        tf1 = {
            n: tuple(s) for n, s in NAMES[arch]["tf1"] if not n.endswith("/Momentum") and n != "global_step"
        }
        assert {n: tuple(v.shape) for n, v in self.model.names.tf1.items()} == tf1  # the official TF1 names
        self.tf1, self.tf2 = root / "tf1" / arch, root / "tf2" / arch
        if "tf1" in flavours:
            self.model.save_tf1(str(self.tf1 / "model.ckpt-1000"))
        if "tf2" in flavours:
            prefix = self.model.save_tf2(str(self.tf2 / "ckpt"))
            written = {n: tuple(s) for n, s in tf.train.list_variables(prefix)}
            assert written == {
                n: tuple(s) for n, s in NAMES[arch]["tf2_checkpoint"]
            }  # the official TF2 paths

    def compare(self, tmp_path: Path, flavour: str, category: str, from_layer: int) -> dict[str, float]:
        """Convert once and compare with TensorFlow's outputs (relative errors). As a pretraining checkpoint
        (category pretrained): h, the three head outputs, and the logits of the linear-eval head on h; as a
        classifier: h, the kept head layer (k = 1), and the logits on head output k."""
        source = self.tf1 if flavour == "tf1" else self.tf2
        plan = quiet(source, tmp_path / "converted.pt", category=category)
        assert plan.source.flavour == flavour and plan.from_layer == from_layer
        ckpt = load_checkpoint(tmp_path / "converted.pt", stage=plan.stage)
        images = torch.from_numpy(self.x).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW, RGB in [0, 1]
        if plan.output_format == "pretrain":
            assert ckpt["config"]["model"]["tf_same_pool"]
            state = {k[len("model.") :]: v for k, v in ckpt["model"].items() if k.startswith("model.")}
            with meta_modules():  # filled below: no random init
                model = FineTuneModel(create_backbone(self.arch, tf_same_pool=True), None, 0, 1000)
                head = ProjectionHead(model.backbone.num_features, 3, 128)
            probe = {
                "classifier.weight": ckpt["model"]["classifier.weight"],
                "classifier.bias": ckpt["model"]["classifier.bias"],
            }
            backbone = {k: v for k, v in state.items() if k.startswith("backbone.")}
            model.load_state_dict({**backbone, **probe}, assign=True)
            head.load_state_dict(
                {k[len("head.") :]: v for k, v in state.items() if k.startswith("head.")}, assign=True
            )
            layers = list(head.eval().layers)
        else:
            assert ckpt["arch"]["tf_same_pool"]
            model = build_model_from_checkpoint(ckpt)
            layers = list(model.head.layers) if model.head is not None else []
        with torch.no_grad():
            outs = [model.eval().backbone(images)]
            for layer in layers:
                outs.append(layer.eval()(outs[-1]))
            logits = model(images)
        errors = {
            "h": rel(outs[0], self.theirs["h"]),
            "logits": rel(logits, self.theirs["logits"][from_layer]),
        }
        errors.update({f"head{j}": rel(outs[j], self.theirs["head"][j - 1]) for j in range(1, len(outs))})
        print(f"{self.arch} {flavour} {category}: relative errors {errors}")
        return errors
