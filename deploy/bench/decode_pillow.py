"""The baseline for `cargo bench --bench decode`: what Keras' `load_img` does for every image of a
split (Pillow: open, convert to RGB, resize with nearest), then `np.asarray`, in one process, so
one core. Prints one JSON line, with wall time and process CPU time."""

import argparse
import json
import pathlib
import time

import numpy as np
import PIL
from PIL import Image

parser = argparse.ArgumentParser()
parser.add_argument("--dataset", required=True)
parser.add_argument("--split", default="train")
parser.add_argument("--size", type=int, default=128)
parser.add_argument("--rounds", type=int, default=1)
args = parser.parse_args()

files = sorted(
    path
    for path in (pathlib.Path(args.dataset) / args.split).glob("*/*")
    if path.suffix.lower() in {".jpeg", ".jpg", ".png"}
)
started, cpu_started = time.perf_counter(), time.process_time()
for _ in range(args.rounds):
    for path in files:
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("RGB").resize((args.size, args.size), Image.NEAREST))
seconds, cpu_seconds = time.perf_counter() - started, time.process_time() - cpu_started
print(json.dumps({
    "impl": "pillow",
    "pillow": PIL.__version__,
    "images": len(files),
    "rounds": args.rounds,
    "seconds": seconds,
    "cpu_seconds": cpu_seconds,
    "images_per_sec": len(files) * args.rounds / seconds,
    "images_per_cpu_sec": len(files) * args.rounds / cpu_seconds,
}))
