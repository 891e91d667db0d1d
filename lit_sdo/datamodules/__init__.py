"""LightningDataModules: training sets, the sample sets latent tasks optimise, and reward conditions.

``training`` holds what models are trained on (digits, an image folder), ``photos`` random crops of
shipped photographs, ``samples`` the fixed sets a
latent-optimisation task works on, ``prompts`` the conditions of reward fine-tuning, and ``images`` the
one image reader they all use.
"""

from lit_sdo.datamodules.images import PHOTOGRAPHS, read_image_file, read_image_folder, read_photograph, skimage_photos
from lit_sdo.datamodules.photos import PHOTOS, PhotoCropsDataModule
from lit_sdo.datamodules.prompts import BlockSampler, RewardPromptDataModule, read_lines
from lit_sdo.datamodules.samples import (
    DIGIT_NAMES,
    LabelSeedDataModule,
    PromptSeedDataModule,
    ReferenceImageDataModule,
    SampleSetDataModule,
)
from lit_sdo.datamodules.training import (
    DIGITS_CLASSES,
    DigitsDataModule,
    ImageFolderDataModule,
    digits_test_tensors,
    load_digits_tensors,
    split_indices,
)

__all__ = [
    "DIGITS_CLASSES",
    "DIGIT_NAMES",
    "BlockSampler",
    "DigitsDataModule",
    "PHOTOGRAPHS",
    "PHOTOS",
    "PhotoCropsDataModule",
    "ImageFolderDataModule",
    "LabelSeedDataModule",
    "PromptSeedDataModule",
    "ReferenceImageDataModule",
    "RewardPromptDataModule",
    "SampleSetDataModule",
    "digits_test_tensors",
    "load_digits_tensors",
    "read_image_file",
    "read_image_folder",
    "read_lines",
    "read_photograph",
    "skimage_photos",
    "split_indices",
]
