"""Data: datasets as uint8 tensors, batched on-device augmentation, deterministic rank-sharded loading."""

from simclrv2.data.augment import (
    AugmentConfig,
    center_crop,
    crop_flip,
    simclr_augment,
    to_float_rgb,
    two_views,
)
from simclrv2.data.datasets import DATASETS, ImageData, find_fashion_mnist, load_dataset
from simclrv2.data.loader import BatchLoader

__all__ = [
    "DATASETS",
    "AugmentConfig",
    "BatchLoader",
    "ImageData",
    "center_crop",
    "crop_flip",
    "find_fashion_mnist",
    "load_dataset",
    "simclr_augment",
    "to_float_rgb",
    "two_views",
]
