"""The one image reader: image files, folders of them, and the photographs scikit-image ships offline.

Every reader returns float tensors (C, H, W) / (N, C, H, W); files and folders in [0, 1] or [-1, 1] as
named, so callers never touch PIL themselves.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
SKIMAGE_PREFIX = "skimage:"


def read_image_file(path: Path | str, channels: int, size: int | None = None) -> Tensor:
    """One image file -> (channels, H, W) in [0, 1]; resized (bicubic) to size×size when ``size`` is given."""
    from PIL import Image

    path = Path(path).expanduser()
    if not path.is_file():
        raise FileNotFoundError(f"image file {str(path)!r} does not exist")
    image = Image.open(path).convert("L" if channels == 1 else "RGB")
    if size is not None and image.size != (size, size):
        image = image.resize((size, size), Image.BICUBIC)
    array = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(image.height, image.width, -1)
    return array.permute(2, 0, 1).float() / 255.0


def read_image_folder(folder: Path, num_samples: int | None, image_size: int | None, channels: int) -> Tensor:
    """The first ``num_samples`` images of a folder (sorted by name) -> (N, C, H, W) in [-1, 1].

    An image of another size than ``image_size`` is resized with a warning; None keeps native sizes
    (then they must agree).
    """
    if not folder.is_dir():
        raise FileNotFoundError(f"reference image source {str(folder)!r} is neither 'digits', 'skimage:<names>' "
                                "nor an existing folder of images; pass data.init_args.source=<folder>")
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:num_samples]
    if not files:
        raise FileNotFoundError(f"reference folder {folder} holds no {'/'.join(IMAGE_SUFFIXES)} images")
    out = []
    for path in files:
        image = read_image_file(path, channels)
        if image_size is not None and tuple(image.shape[-2:]) != (image_size, image_size):
            warnings.warn(f"reference {path.name} is {image.shape[-1]}×{image.shape[-2]}: resized to "
                          f"{image_size}×{image_size}", stacklevel=3)
            image = read_image_file(path, channels, image_size)
        out.append(image * 2 - 1)  # (C, H, W) in [-1, 1]
    if len({tuple(t.shape) for t in out}) > 1:
        raise ValueError(f"reference images in {folder} differ in size; set data.init_args.image_size to resize")
    return torch.stack(out)


SKIMAGE_PREFIX = "skimage:"


def skimage_photos(names: str, num_samples: int | None, image_size: int | None, channels: int) -> Tensor:
    """Photographs bundled with scikit-image (no download), centre-cropped to squares, in [-1, 1].

    ``names`` is ``lfw_subset`` (200 grey 25×25 images: 100 faces, then 100 non-faces) or comma-separated
    ``skimage.data`` images
    (``astronaut``, ``chelsea``, ``coffee``, ``camera``, ...). A photo is resized to ``image_size``
    (no warning: photographs never come at the generator's size); None needs them all the same size.
    """
    try:
        from skimage import data
    except ImportError:
        raise ModuleNotFoundError("source skimage:... needs scikit-image: pip install 'lit_sdo[photos]'") from None
    if names == "lfw_subset":
        arrays = list(data.lfw_subset()[:num_samples])  # float in [0, 1]
    else:
        arrays = []
        for name in names.split(",")[:num_samples]:
            loader = getattr(data, name.strip(), None)
            if loader is None or not callable(loader):
                raise ValueError(f"skimage.data has no image {name.strip()!r}; try astronaut, chelsea, coffee, camera "
                                 "or lfw_subset")
            arrays.append(loader())
    out = []
    for array in arrays:
        image = torch.as_tensor(array, dtype=torch.float32)
        image = image / 255.0 if image.max() > 1.0 else image
        image = image.unsqueeze(-1) if image.dim() == 2 else image[..., :3]
        image = image.permute(2, 0, 1)  # (C, H, W) in [0, 1]
        image = image.mean(0, keepdim=True) if channels == 1 else image.expand(3, -1, -1)
        side = min(image.shape[-2:])
        top, left = (image.shape[-2] - side) // 2, (image.shape[-1] - side) // 2
        image = image[:, top:top + side, left:left + side]
        if image_size is not None and side != image_size:
            image = F.interpolate(image[None], size=(image_size, image_size), mode="bicubic", antialias=True,
                                  align_corners=False)[0]
        out.append(image.clamp(0, 1) * 2 - 1)
    if len({tuple(t.shape) for t in out}) > 1:
        raise ValueError(f"skimage photos {names} differ in size; set data.init_args.image_size to resize")
    return torch.stack(out)


def load_style_image(spec: str, size: int, channels: int) -> Tensor:
    """``digits:<test index>`` or an image file -> (1, channels, size, size) in [0, 1]."""
    if spec.startswith("digits:"):
        from lit_sdo.datamodules.training import digits_test_tensors

        images, _ = digits_test_tensors(size)
        index = int(spec.split(":", 1)[1])
        if not 0 <= index < len(images):
            raise ValueError(f"style_image={spec!r}: the digits test split has {len(images)} images")
        image = (images[index:index + 1] + 1) / 2
    else:
        if not Path(spec).expanduser().is_file():
            raise FileNotFoundError(f"style image {spec!r} not found: pass style_image=<image file> or "
                                    "digits:<test index>")
        image = read_image_file(spec, channels)[None]
    if image.shape[1] != channels:
        image = image.expand(-1, channels, -1, -1) if channels == 3 else image.mean(1, keepdim=True)
    if tuple(image.shape[-2:]) != (size, size):
        warnings.warn(f"style image {spec!r} is {image.shape[-1]}×{image.shape[-2]}: resized to {size}×{size}",
                      stacklevel=2)
        image = F.interpolate(image, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
    return image.clamp(0, 1)


# Photographs and textures that installed packages ship (no download): name -> (package, file or loader).
PHOTOGRAPHS: dict[str, tuple[str, str]] = {
    **{name: ("skimage", name) for name in (
        "astronaut", "chelsea", "coffee", "rocket", "hubble_deep_field", "immunohistochemistry", "retina",
        "stereo_motorcycle", "colorwheel", "brick", "grass", "gravel", "moon", "coins", "cell", "camera", "clock")},
    "china": ("sklearn", "china.jpg"),
    "flower": ("sklearn", "flower.jpg"),
    "grace_hopper": ("matplotlib", "grace_hopper.jpg"),
}


def check_photographs(names: list[str] | tuple[str, ...]) -> None:
    """One-line error naming the first name that is not in ``PHOTOGRAPHS`` and listing the allowed ones."""
    unknown = [name for name in names if name not in PHOTOGRAPHS]
    if unknown:
        raise ValueError(f"photograph {unknown[0]!r} is not shipped with the installed packages; allowed: "
                         f"{', '.join(PHOTOGRAPHS)}")


def read_photograph(name: str) -> Tensor:
    """One shipped photograph (see ``PHOTOGRAPHS``) -> (3, H, W) in [0, 1]; grey textures are repeated to RGB."""
    check_photographs([name])
    package, item = PHOTOGRAPHS[name]
    if package == "skimage":
        from skimage import data

        array = getattr(data, item)()
        if isinstance(array, tuple):  # stereo_motorcycle: (left, right, disparity)
            array = array[0]
    elif package == "sklearn":
        from sklearn.datasets import load_sample_image

        array = load_sample_image(item)
    else:
        import matplotlib.cbook as cbook
        from PIL import Image

        with cbook.get_sample_data(item) as handle:
            array = Image.open(handle).convert("RGB")
            array.load()
    image = torch.from_numpy(np.array(array)).float() / 255.0  # (H, W) or (H, W, C) in [0, 1]
    image = image.unsqueeze(-1).expand(-1, -1, 3) if image.dim() == 2 else image[..., :3]
    return image.permute(2, 0, 1).contiguous()  # (3, H, W)
