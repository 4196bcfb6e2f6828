"""trainq's preprocessing of one image, in Pillow and numpy only (no torch), so that both
`load_checkpoint.py` (PyTorch) and `onnx_predict.py` (onnxruntime) feed their networks the same
tensor: the full decode (Pillow), the size trainq chose (`image_size`, or for variable size the
aspect-keeping multiple of 32 it computes), the spec's interpolation (`nearest` and `bilinear` are
Pillow's own resize, which trainq reproduces; `area` is trainq's box mean over whole source
pixels, done here with the same integer arithmetic), and the backbone's mean/std.
"""
import numpy as np
from PIL import Image

NORMALISATION = {
    "vgg16": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "inception_v3": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
    "resnet50": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "densenet121": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "efficientnet_b0": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
}
RESAMPLING = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}
# trainq's smallest input side per backbone, its variable-size default and its size quantum
# (`domain::backbone`, `domain::spec`).
MIN_SIDE = {"vgg16": 32, "inception_v3": 75, "resnet50": 32, "densenet121": 29, "efficientnet_b0": 32}
DEFAULT_MAX_SIDE = 256
QUANTUM = 32


def target_size(spec, width, height):
    """The (width, height) trainq resizes a `width`×`height` image to (`Resize::target`)."""
    if spec.get("image_size") is not None:
        return spec["image_size"], spec["image_size"]
    max_side = spec.get("max_image_side") or DEFAULT_MAX_SIDE
    min_side = -(-MIN_SIDE[spec["backbone"]] // QUANTUM) * QUANTUM
    lowest, highest = min_side, max(max_side, min_side)
    scale = min(max_side / max(width, height, 1), 1.0)

    def side(extent):
        # Rust's f64::round: halves away from zero (Python's round() would go to even).
        return min(max(int(extent * scale / QUANTUM + 0.5) * QUANTUM, lowest), highest)

    return side(width), side(height)


def area_resize(source, width, height):
    """trainq's `area` on an `[H, W, 3]` uint8 array: each output pixel the rounded mean of the
    whole source pixels its box covers (`data.rs` `resize_area`), not Pillow's BOX, which weighs
    partly covered pixels. Box sums come from a summed-area table, exactly, in integers."""
    table = np.zeros((source.shape[0] + 1, source.shape[1] + 1, 3), dtype=np.int64)
    table[1:, 1:] = source.astype(np.int64).cumsum(0).cumsum(1)

    def spans(extent, out):
        o = np.arange(out)
        start = o * extent // out
        end = np.minimum(np.maximum(-(-(o + 1) * extent // out), start + 1), extent)
        return start, end

    (y0, y1), (x0, x1) = spans(source.shape[0], height), spans(source.shape[1], width)
    y0, y1, x0, x1 = y0[:, None], y1[:, None], x0[None, :], x1[None, :]
    sums = table[y1, x1] - table[y0, x1] - table[y1, x0] + table[y0, x0]
    count = ((y1 - y0) * (x1 - x0))[..., None]
    return ((sums + count // 2) // count).astype(np.uint8)


def pixels(spec, path):
    """The image as trainq feeds it: `[H, W, 3]` uint8."""
    image = Image.open(path).convert("RGB")
    width, height = target_size(spec, image.width, image.height)
    interpolation = spec.get("interpolation", "nearest")
    if interpolation == "area":
        return area_resize(np.asarray(image), width, height)
    return np.asarray(image.resize((width, height), RESAMPLING[interpolation]))


def network_input(spec, path):
    """What the network takes: `[3, H, W]` float32, scaled to 0..1 and normalised per channel.

    `(pixels / 255 − mean) / std`, computed bit for bit as the worker computes it
    (`src/worker/normalise.rs`): one scale `1 / (255 · std)` and one shift `−mean / std` per
    channel, worked out in float64 and rounded to float32, then `pixels · scale + shift` in float32.
    Another order of the same float32 operations differs in the last bit of some inputs, which a
    bf16 job's first convolution can round the other way: that moved an InceptionV3 bf16 job's
    replayed probabilities by 1.3e-3."""
    mean, std = (np.array(values, dtype=np.float64).reshape(3, 1, 1) for values in NORMALISATION[spec["backbone"]])
    scale, shift = (1.0 / (255.0 * std)).astype(np.float32), (-mean / std).astype(np.float32)
    chw = pixels(spec, path).transpose(2, 0, 1).astype(np.float32)
    return np.ascontiguousarray(chw * scale + shift)
