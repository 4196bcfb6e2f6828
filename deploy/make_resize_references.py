#!/usr/bin/env python3
"""Writes the Pillow-made references trainq's resizing is tested against (tests/data/resize/).

Keras' `load_img` (which the assignment's `flow_from_directory` calls) opens a file with Pillow,
converts it to RGB and resizes it with `Image.resize(size, NEAREST or BILINEAR)`. These files
record what Pillow computes for small gray and colour sources, up- and downscaled to odd sizes,
so `cargo test` checks trainq against Pillow itself without needing Python.

Run with the Python that has Pillow (the venv deploy/setup-libtorch.sh makes):
    ~/.cache/trainq/torch-2.11.0/bin/python deploy/make_resize_references.py
"""
import random
import sys
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "resize"
# (source name, mode, width, height)
SOURCES = [("gray", "L", 37, 23), ("colour", "RGB", 29, 41)]
# Downscaled, upscaled, odd, and up in one direction while down in the other.
SIZES = [(16, 9), (7, 5), (64, 50), (31, 17), (50, 11), (3, 3)]
FILTERS = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}


def source(mode, width, height, seed):
    """Noise over a gradient: every pixel differs, so a sampling off by one pixel shows."""
    rng = random.Random(seed)
    image = Image.new(mode, (width, height))
    channels = len(mode)
    pixels = []
    for y in range(height):
        for x in range(width):
            base = (x * 255 // max(width - 1, 1) + y * 97 // max(height - 1, 1)) % 256
            values = tuple((base + rng.randrange(-60, 61) + 40 * c) % 256 for c in range(channels))
            pixels.append(values[0] if channels == 1 else values)
    image.putdata(pixels)
    return image


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for seed, (name, mode, width, height) in enumerate(SOURCES):
        image = source(mode, width, height, seed)
        image.save(OUT / f"{name}.png")
        for size in SIZES:
            for filter_name, resample in FILTERS.items():
                image.resize(size, resample).save(OUT / f"{name}-{filter_name}-{size[0]}x{size[1]}.png")
    print(f"wrote {len(list(OUT.glob('*.png')))} files to {OUT} with Pillow {Image.__version__}", file=sys.stderr)


if __name__ == "__main__":
    main()
