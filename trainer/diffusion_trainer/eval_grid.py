"""The sample grid: one row per guidance scale, one column per fixed eval prompt."""

from __future__ import annotations

import io

import torch
from PIL import Image

GAP_PX = 2


def encode_grid_png(images: list[tuple[float, int, torch.Tensor]], scales: list[float]) -> bytes:
    """(scale, sample index, uint8 [3, H, W]) triples to PNG bytes."""
    indices = sorted({index for _, index, _ in images})
    height, width = images[0][2].shape[-2:]
    canvas = Image.new(
        "RGB",
        (len(indices) * (width + GAP_PX) - GAP_PX, len(scales) * (height + GAP_PX) - GAP_PX),
        (255, 255, 255),
    )
    for scale, index, image in images:
        row, column = scales.index(scale), indices.index(index)
        tile = Image.fromarray(image.permute(1, 2, 0).numpy())
        canvas.paste(tile, (column * (width + GAP_PX), row * (height + GAP_PX)))
    buffer = io.BytesIO()
    canvas.save(buffer, format="PNG")
    return buffer.getvalue()
