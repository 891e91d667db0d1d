"""Image helpers shared by every task: range conversion, grids for TensorBoard and PNG files."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision.utils import make_grid

from lit_sdo.io import atomic_path


def to_unit_range(images: Tensor) -> Tensor:
    """[-1, 1] (the samplers' range) -> [0, 1] (classifiers', metrics' and files' range)."""
    return ((images + 1) / 2).clamp(0, 1)


def image_grid(images: Tensor, nrow: int = 8, padding: int = 1) -> Tensor:
    """Images in [0, 1] (B, C, H, W) -> one grid image (3, H', W') in [0, 1]."""
    grid = make_grid(images.detach().float().cpu().clamp(0, 1), nrow=nrow, padding=padding, pad_value=1.0)
    return grid


def to_uint8(image: Tensor) -> Tensor:
    """[0, 1] floats -> 0..255 bytes, rounded: what a PNG file and TensorBoard store (TensorBoard would truncate
    floats, one level below the file wherever x·255 lands just under an integer)."""
    return (image.detach().float().cpu().clamp(0, 1) * 255).round().to(torch.uint8)


def save_png(path: str | os.PathLike[str], image: Tensor, scale: int = 1) -> Path:
    """Write one image (C, H, W) in [0, 1] as PNG, atomically; ``scale`` enlarges small digits for viewing."""
    array = to_uint8(image)
    if array.shape[0] == 1:
        pil = Image.fromarray(array[0].numpy(), mode="L")
    else:
        pil = Image.fromarray(array.permute(1, 2, 0).numpy())
    if scale != 1:
        pil = pil.resize((pil.width * scale, pil.height * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        pil.save(tmp, format="PNG")
    return Path(path)


# ----- a grid a person can read -------------------------------------------------------------------------------

FONT_SIZE = 13  # PIL's default font (it ships with Pillow: nothing is downloaded)
GAP = 8  # pixels between cells and around text; a row's frame is drawn inside this gap
FRAME = 3  # width of a row's success / failure frame
FRAME_COLOURS = {True: (25, 170, 25), False: (215, 30, 30)}


def labelled_grid(cells: Tensor, column_titles: Sequence[str], row_titles: Sequence[str],
                  captions: Sequence[Sequence[str]] | None = None, frames: Sequence[bool | None] | None = None,
                  cell_side: int = 96) -> Tensor:
    """Images with the words that say what they are: (rows, columns, C, H, W) in [0, 1] -> (3, H', W') in [0, 1].

    A bare 16×16 grid is unreadable, so every image is enlarged (nearest neighbour, the smallest integer
    factor reaching ``cell_side`` px: pixels stay pixels), each column gets its title on top, each row its
    title on the left (may hold several lines), each image an optional one-line caption below it, and
    each row an optional frame: green (True), red (False), none (None). Black text on white.
    """
    from PIL import ImageDraw, ImageFont

    n_rows, n_columns = cells.shape[:2]
    if len(column_titles) != n_columns or len(row_titles) != n_rows:
        raise ValueError(f"{len(column_titles)} column titles and {len(row_titles)} row titles for a grid of "
                         f"{n_rows} rows × {n_columns} columns")
    font = ImageFont.load_default(size=FONT_SIZE)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))

    def size(text: str) -> tuple[int, int]:
        left, top, right, bottom = measure.multiline_textbbox((0, 0), text, font=font)
        return right - left, bottom

    height, width = cells.shape[-2:]
    scale = max(1, -(-cell_side // max(height, width)))  # ceil
    cell_w, cell_h = width * scale, height * scale
    texts = [*column_titles, *(c for row in captions or [] for c in row)]
    column_w = max(cell_w, *(size(t)[0] for t in texts))
    line_h = size("Ag")[1]
    left_w = max(size(t)[0] for t in row_titles) + 2 * GAP
    header_h = line_h + 2 * GAP
    row_h = max(cell_h + (line_h + GAP // 2 if captions else 0), *(size(t)[1] for t in row_titles)) + 2 * GAP
    canvas = Image.new("RGB", (left_w + n_columns * (column_w + GAP), header_h + n_rows * row_h), "white")
    draw = ImageDraw.Draw(canvas)
    rgb = cells.detach().float().cpu().clamp(0, 1)
    rgb = rgb.expand(-1, -1, 3, -1, -1) if rgb.shape[2] == 1 else rgb
    pixels = to_uint8(rgb).permute(0, 1, 3, 4, 2).numpy()  # (rows, columns, H, W, 3)
    for c, title in enumerate(column_titles):
        draw.text((left_w + c * (column_w + GAP) + (column_w - size(title)[0]) // 2, GAP), title, fill="black",
                  font=font)
    for r in range(n_rows):
        top = header_h + r * row_h + GAP
        draw.multiline_text((GAP, top), row_titles[r], fill="black", font=font)
        for c in range(n_columns):
            x = left_w + c * (column_w + GAP) + (column_w - cell_w) // 2
            canvas.paste(Image.fromarray(pixels[r, c]).resize((cell_w, cell_h), Image.NEAREST), (x, top))
            if frames is not None and frames[r] is not None:
                draw.rectangle((x - FRAME, top - FRAME, x + cell_w + FRAME - 1, top + cell_h + FRAME - 1),
                               outline=FRAME_COLOURS[bool(frames[r])], width=FRAME)
            if captions:
                text = captions[r][c]
                draw.text((left_w + c * (column_w + GAP) + (column_w - size(text)[0]) // 2, top + cell_h + GAP // 2),
                          text, fill="black", font=font)
    return torch.from_numpy(np.asarray(canvas).copy()).permute(2, 0, 1).float() / 255  # (3, H', W')
