#!/usr/bin/env python3
"""Writes the Pillow-made references trainq's JPEG decode is tested against (tests/data/jpeg/).

Keras' `load_img` decodes with Pillow, i.e. libjpeg-turbo (accurate integer IDCT, fancy
upsampling). These files are JPEGs Pillow wrote in each chroma layout (4:2:0, 4:2:2, 4:4:4,
grayscale; with and without restart markers; quality 50 to 100), progressive ones, an
arithmetic-coded one (Pillow cannot write those: `jpegtran -arithmetic` from Debian's
libjpeg-turbo-progs re-codes a Pillow file) and an Adobe CMYK one, and, next to each, a PNG of the
pixels Pillow decodes from it (`Image.open(...).convert("RGB")`), so `cargo test` checks
`src/worker/jpeg.rs` against Pillow without needing Python. Files already there are kept: the
references must not move with the Pillow version that happens to be installed.

Run with the Python that has Pillow (the venv deploy/setup-libtorch.sh makes):
    ~/.cache/trainq/torch-2.11.0/bin/python deploy/make_jpeg_references.py
"""
import random
import subprocess
from pathlib import Path

from PIL import Image

OUT = Path(__file__).resolve().parent.parent / "tests" / "data" / "jpeg"
# name: (width, height, Image.save options); odd sizes leave partial blocks and MCUs, and a last
# chroma column and row of their own.
# Chroma at most two samples wide (3x3, 2x7, 4:2:2 3x5) is replicated, not filtered, by libjpeg;
# one sample high (5x2) is filtered against itself.
FILES = {
    "420-q90": (61, 47, {"quality": 90}),
    "420-q75-3x3": (3, 3, {"quality": 75}),
    "420-q75-2x7": (2, 7, {"quality": 75}),
    "420-q75-5x2": (5, 2, {"quality": 75}),
    "422-q75-restarts": (61, 47, {"quality": 75, "subsampling": "4:2:2", "restart_marker_blocks": 5}),
    "422-q75-3x5": (3, 5, {"quality": 75, "subsampling": "4:2:2"}),
    "444-q100": (61, 47, {"quality": 100, "subsampling": "4:4:4"}),
    "gray-q50-restarts": (61, 47, {"quality": 50, "restart_marker_rows": 1}),
    "progressive-420-q85": (61, 47, {"quality": 85, "progressive": True}),
    "gray-progressive-q90": (61, 47, {"quality": 90, "progressive": True}),
    # Re-coded by jpegtran with arithmetic coding (the coefficients, so the pixels, stay Pillow's).
    "arithmetic-420-q80": (61, 47, {"quality": 80}),
    # Pillow writes CMYK with Adobe's marker and inverted samples, as Photoshop does.
    "cmyk-adobe-q90": (61, 47, {"quality": 90}),
}


def scene(width, height, seed):
    """Colour noise over a gradient and a sharp edge: large coefficients, every rounding path."""
    rng = random.Random(seed)
    image = Image.new("RGB", (width, height))
    pixels = []
    for y in range(height):
        for x in range(width):
            base = x * 200 // max(width - 1, 1) + (60 if x > width // 2 and y > height // 3 else 0)
            pixels.append(tuple(max(0, min(255, base + rng.randrange(-50, 51) + 70 * c - 70)) for c in range(3)))
    image.putdata(pixels)
    return image


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    for seed, (name, (width, height, options)) in enumerate(FILES.items()):
        path = OUT / f"{name}.jpeg"
        if path.exists():
            continue
        image = scene(width, height, seed)
        if name.startswith("gray"):
            image = image.convert("L")
        if name.startswith("cmyk"):
            image = image.convert("CMYK")
        image.save(path, **options)
        if name.startswith("arithmetic"):
            recoded = subprocess.run(["jpegtran", "-arithmetic", str(path)], check=True, capture_output=True).stdout
            path.write_bytes(recoded)
        Image.open(path).convert("RGB").save(OUT / f"{name}.png")
        print(path)


if __name__ == "__main__":
    main()
