"""Random crops of shipped photographs: a full-rank natural-image training set that needs no download.

Why: scikit-learn's digits are 8×8 images upsampled, so they span a 64-dimensional subspace of the 16×16
pixel space; a DDPM trained on them contracts every other direction of x_T, and SDO's skip-path gradient
(graph of one step only) points far from the exact one. For Gaussian data x₀ ~ N(0, Σ) the probability-flow
map is x₀ = Σ^{1/2}·x_T, so an identity-like gradient aligns when Σ is near-isotropic, as natural images'
1/f² spectrum is far more than a 64-dim subspace. Photographs give that spectrum; random crops at random
scale, flips and a small colour jitter give unlimited samples the generator cannot memorise.

One class per photograph. Each photograph is split along its long axis: the first ``1 - holdout_fraction``
feeds training crops (fresh ones every time), the rest the fixed validation / test crops (FID reference,
classifier accuracy), so no held-out crop shares a pixel with a training crop.
"""

from __future__ import annotations

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset

from lit_sdo.datamodules.images import check_photographs, read_photograph
from lit_sdo.datamodules.training import check_model_classes

# Ten photographs whose mean colours overlap (a logistic regression on a crop's mean RGB scores far below a
# CNN on them: see tests/test_photos.py); very dark / single-hue ones (hubble_deep_field, retina) are left out.
PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "immunohistochemistry", "stereo_motorcycle", "china",
          "flower", "grace_hopper", "brick")


def load_photos(names: tuple[str, ...] | list[str], side: int) -> list[Tensor]:
    """Each photograph (3, H, W) in [0, 1], resized (antialiased) so its short side is ``side`` pixels:
    one crop scale means the same share of every photograph whatever its native size."""
    photos = []
    for name in names:
        photo = read_photograph(name)
        h, w = photo.shape[-2:]
        size = (side, round(w * side / h)) if h <= w else (round(h * side / w), side)
        photos.append(F.interpolate(photo[None], size=size, mode="bilinear", antialias=True,
                                    align_corners=False)[0].clamp(0, 1))
    return photos


def split_region(photo: Tensor, holdout_fraction: float, part: str) -> Tensor:
    """The ``train`` (first) or ``holdout`` (last ``holdout_fraction``) part of a photo along its long axis."""
    axis = -1 if photo.shape[-1] >= photo.shape[-2] else -2
    cut = round(photo.shape[axis] * (1 - holdout_fraction))
    return photo.narrow(axis, 0, cut) if part == "train" else photo.narrow(axis, cut, photo.shape[axis] - cut)


def random_crops(regions: list[Tensor], labels: Tensor, *, size: int, side: int, scale: tuple[float, float],
                 jitter: float, generator: torch.Generator | None = None) -> Tensor:
    """One crop of ``regions[label]`` (3, H, W) per label -> (B, 3, size, size) in [0, 1].

    A crop's side is u·``side`` px with u ~ U(scale), its position uniform in the region; it is resized by
    ``roi_align`` (each output pixel averages ⌈crop/size⌉² samples: antialiased, and one call per class
    instead of one per crop), flipped with probability ½, and scaled by a brightness and per-channel
    gains ~ U(1 ± jitter).
    """
    from torchvision.ops import roi_align

    n = len(labels)
    crop_side = (torch.empty(n).uniform_(*scale, generator=generator) * side).round().clamp(min=1)  # (B,)
    heights = torch.tensor([regions[int(c)].shape[-2] for c in labels], dtype=torch.float32)
    widths = torch.tensor([regions[int(c)].shape[-1] for c in labels], dtype=torch.float32)
    top = (torch.rand(n, generator=generator) * (heights - crop_side + 1)).floor()
    left = (torch.rand(n, generator=generator) * (widths - crop_side + 1)).floor()
    boxes = torch.stack([left, top, left + crop_side, top + crop_side], dim=1)  # (B, 4) as x1, y1, x2, y2
    out = torch.empty(n, 3, size, size)
    for c in labels.unique().tolist():
        rows = (labels == c).nonzero().flatten()
        out[rows] = roi_align(regions[c][None], [boxes[rows]], output_size=size, spatial_scale=1.0,
                              sampling_ratio=-1, aligned=True)
    flip = torch.rand(n, generator=generator) < 0.5
    out = torch.where(flip.view(n, 1, 1, 1), out.flip(-1), out)
    gains = torch.empty(n, 4).uniform_(1 - jitter, 1 + jitter, generator=generator)  # brightness, R, G, B
    return (out * gains[:, :1, None, None] * gains[:, 1:, None, None]).clamp(0, 1)


class RandomCropBatches(Dataset):
    """``num_batches`` batches of (crops (B, 3, S, S) in [-1, 1], labels (B,)), FRESH random crops at every
    access, labels drawn uniformly; served with ``DataLoader(batch_size=None)`` (the dataset batches)."""

    def __init__(self, regions: list[Tensor], num_batches: int, batch_size: int, **crop: object) -> None:
        self.regions, self.num_batches, self.batch_size, self.crop = regions, num_batches, batch_size, crop

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        labels = torch.randint(0, len(self.regions), (self.batch_size,))
        return random_crops(self.regions, labels, **self.crop) * 2 - 1, labels  # type: ignore[arg-type]


class PhotoCropsDataModule(L.LightningDataModule):
    """32×32 (or ``image_size``) RGB crops of shipped photographs, one class each, in [-1, 1], with labels.

    Yields (images (B, 3, S, S), labels (B,)) like ``DigitsDataModule``, so the diffusion and classifier
    training modules take it unchanged. Training crops are drawn afresh at every access (an epoch is
    ``samples_per_epoch`` of them); validation and test are fixed crops of the held-out strip of each photo,
    drawn with seeds ``seed`` and ``seed + 1``.

    Args:
        photos: photograph names (``lit_sdo.datamodules.images.PHOTOGRAPHS``); class c is ``photos[c]``.
        image_size: side of the square crops after resizing.
        photo_side: each photo is first resized so its short side has this many pixels.
        scale: range of a crop's side as a share of ``photo_side`` (a crop must fit the held-out strip).
        jitter: brightness and per-channel gains are drawn from U(1 - jitter, 1 + jitter).
        holdout_fraction: share of each photo's long axis held out for validation and test crops.
        holdout_per_class: fixed validation crops and test crops per class (each).
        samples_per_epoch: random training crops per epoch.
        batch_size: batch size of every loader.
        seed: seed of the held-out crops (training crops follow the global seed).
        num_workers: DataLoader workers.
    """

    def __init__(self, photos: list[str] | None = None, image_size: int = 32, photo_side: int = 256,
                 scale: tuple[float, float] = (0.15, 0.3), jitter: float = 0.1, holdout_fraction: float = 0.3,
                 holdout_per_class: int = 200, samples_per_epoch: int = 6400, batch_size: int = 64, seed: int = 0,
                 num_workers: int = 0) -> None:
        super().__init__()
        photos = list(PHOTOS if photos is None else photos)
        check_photographs(photos)  # at construction: a misspelt name stops the run before any work
        if len(photos) < 2 or len(set(photos)) != len(photos):
            raise ValueError(f"photos={photos} must name at least 2 distinct photographs (one class each)")
        if image_size < 8 or not 0 < scale[0] <= scale[1] or not 0 <= jitter < 1 or not 0 < holdout_fraction < 1:
            raise ValueError(f"image_size={image_size} (>= 8), scale={scale} (0 < min <= max), jitter={jitter} "
                             f"([0, 1)) or holdout_fraction={holdout_fraction} ((0, 1)) is out of range")
        self.save_hyperparameters()
        self.photos, self.image_size, self.batch_size, self.num_workers = photos, image_size, batch_size, num_workers
        self.num_classes = len(photos)
        self.class_names = photos  # class c is photograph photos[c]
        self._regions: dict[str, list[Tensor]] = {}
        self._fixed: dict[str, TensorDataset] = {}

    def regions(self, part: str) -> list[Tensor]:
        """The ``train`` or ``holdout`` region of every photo (one per class), checked to hold a largest crop."""
        if not self._regions:
            photos = load_photos(self.photos, self.hparams.photo_side)
            largest = round(self.hparams.scale[1] * self.hparams.photo_side)
            for name, photo in zip(self.photos, photos, strict=True):
                for p in ("train", "holdout"):
                    region = split_region(photo, self.hparams.holdout_fraction, p)
                    if largest > min(region.shape[-2:]):
                        raise ValueError(
                            f"a crop of {largest} px (scale max {self.hparams.scale[1]} × photo_side "
                            f"{self.hparams.photo_side}) is larger than the {p} region {tuple(region.shape[-2:])} of "
                            f"photograph {name!r}; lower scale or change holdout_fraction")
                    self._regions.setdefault(p, []).append(region)
        return self._regions[part]

    def crop_arguments(self) -> dict[str, object]:
        return {"size": self.image_size, "side": self.hparams.photo_side, "scale": tuple(self.hparams.scale),
                "jitter": self.hparams.jitter}

    def split_tensors(self, name: str) -> tuple[Tensor, Tensor]:
        """The fixed ``val`` or ``test`` crops (N, 3, S, S) in [-1, 1] and labels (N,), classes cycling fastest;
        ``train`` gives as many fresh training crops (drawn with seed ``seed + 2``: FID's train-vs-test floor)."""
        if name not in ("train", "val", "test"):
            raise ValueError(f"split {name!r} is not one of train, val, test")
        if name not in self._fixed:
            regions = self.regions("train" if name == "train" else "holdout")
            generator = torch.Generator().manual_seed(self.hparams.seed + ("val", "test", "train").index(name))
            n = self.hparams.holdout_per_class * self.num_classes
            labels = torch.arange(n) % self.num_classes
            images = random_crops(regions, labels, generator=generator, **self.crop_arguments())  # type: ignore[arg-type]
            self._fixed[name] = TensorDataset(images * 2 - 1, labels)
        return self._fixed[name].tensors  # type: ignore[return-value]

    def setup(self, stage: str | None = None) -> None:
        check_model_classes(self, f"one per photograph: {', '.join(self.photos)}")
        self.regions("train")

    def train_dataloader(self) -> DataLoader:
        num_batches = max(1, self.hparams.samples_per_epoch // self.batch_size)
        dataset = RandomCropBatches(self.regions("train"), num_batches, self.batch_size, **self.crop_arguments())
        return DataLoader(dataset, batch_size=None, shuffle=False, num_workers=self.num_workers)

    def val_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.split_tensors("val")), batch_size=self.batch_size)

    def test_dataloader(self) -> DataLoader:
        return DataLoader(TensorDataset(*self.split_tensors("test")), batch_size=self.batch_size)
