"""Pure nn.Modules of SimCLRv2: ResNet backbone, projection head, classifier (SPEC §1, §2).

Models take every dimension as a constructor argument and never read configs or flags.
"""

from simclrv2.models.heads import Classifier, ProjectionHead
from simclrv2.models.registry import OFFICIAL_BACKBONES, create_backbone, parse_backbone_name
from simclrv2.models.resnet import ResNet
from simclrv2.models.simclr import SimCLRModel

__all__ = [
    "OFFICIAL_BACKBONES",
    "Classifier",
    "ProjectionHead",
    "ResNet",
    "SimCLRModel",
    "create_backbone",
    "parse_backbone_name",
]
