"""Pure nn.Modules of SimCLRv2: ResNet backbone, projection head, classifier (SPEC §1, §2).

Models take every dimension as a constructor argument and never read configs or flags.
"""

from simclrv2.models.classifier import FineTuneModel, kept_head_layers, load_pretrained_into
from simclrv2.models.heads import Classifier, ProjectionHead
from simclrv2.models.registry import OFFICIAL_BACKBONES, create_backbone, parse_backbone_name
from simclrv2.models.resnet import ResNet
from simclrv2.models.simclr import SimCLRModel

__all__ = [
    "OFFICIAL_BACKBONES",
    "Classifier",
    "FineTuneModel",
    "ProjectionHead",
    "ResNet",
    "SimCLRModel",
    "create_backbone",
    "kept_head_layers",
    "load_pretrained_into",
    "parse_backbone_name",
]
