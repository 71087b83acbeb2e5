"""Coloured shapes on a dark background ("a red circle"): the synthetic images that the demo
dataset, the tiny CLIP and the evaluation tests all draw."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw

COLOURS = {
    "red": (220, 40, 40),
    "green": (40, 190, 60),
    "blue": (40, 70, 220),
    "yellow": (235, 210, 40),
}
SHAPES = ("circle", "square", "triangle")
BACKGROUND = (24, 24, 24)
CAPTION_WORDS = ("a", *COLOURS, *SHAPES)


def draw_shape(shape: str, colour: str, resolution: int, rng: np.random.Generator) -> Image.Image:
    image = Image.new("RGB", (resolution, resolution), BACKGROUND)
    size = resolution * rng.uniform(0.45, 0.7)
    cx, cy = (resolution / 2 + rng.uniform(-0.12, 0.12, 2) * resolution).tolist()
    half = size / 2
    box = (cx - half, cy - half, cx + half, cy + half)
    draw = ImageDraw.Draw(image)
    fill = COLOURS[colour]
    if shape == "circle":
        draw.ellipse(box, fill=fill)
    elif shape == "square":
        draw.rectangle(box, fill=fill)
    else:
        draw.polygon([(cx, cy - half), (cx - half, cy + half), (cx + half, cy + half)], fill=fill)
    return image
