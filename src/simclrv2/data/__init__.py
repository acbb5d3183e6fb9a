"""Data: datasets as uint8 tensors, batched on-device augmentation, deterministic rank-sharded loading."""

from simclrv2.data.augment import (
    AugmentConfig,
    center_crop,
    crop_flip,
    distort_views,
    simclr_augment,
    to_float_rgb,
    two_view_batch,
    two_views,
)
from simclrv2.data.datasets import DATASETS, ImageData, find_fashion_mnist, load_dataset
from simclrv2.data.loader import BatchLoader, CropSpec
from simclrv2.data.subsets import (
    LabelSpec,
    label_fraction_indices,
    labeled_subset,
    load_indices,
    parse_label_spec,
    read_subset_file,
    save_indices,
    split_validation,
    subset_data,
)

__all__ = [
    "DATASETS",
    "AugmentConfig",
    "BatchLoader",
    "CropSpec",
    "ImageData",
    "LabelSpec",
    "center_crop",
    "crop_flip",
    "distort_views",
    "find_fashion_mnist",
    "label_fraction_indices",
    "labeled_subset",
    "load_dataset",
    "load_indices",
    "parse_label_spec",
    "read_subset_file",
    "save_indices",
    "simclr_augment",
    "split_validation",
    "subset_data",
    "to_float_rgb",
    "two_view_batch",
    "two_views",
]
