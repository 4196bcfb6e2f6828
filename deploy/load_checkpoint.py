"""Loads a trainq checkpoint in plain PyTorch, strictly.

Builds the torchvision backbone and the spec's head from a job's `spec.json`, loads
`final.safetensors` (or `phase1.safetensors`) with `strict=True`, and optionally predicts images
with the same preprocessing trainq used: the full decode (Pillow), the size trainq chose
(`image_size`, or for variable size the aspect-keeping multiple of 32 it computes), the spec's
interpolation (`nearest` and `bilinear` are Pillow's own resize, which trainq reproduces;
`area` is trainq's box mean over whole source pixels, done here with the same arithmetic), and
the backbone's mean/std. A job with `fast_decode` decoded large JPEGs at a reduced scale, which
Pillow cannot; its predictions here differ a little.

    python deploy/load_checkpoint.py spec.json final.safetensors [image.jpeg ...]

Prints one line per image: `<path>\t<probability of each class>`; a binary model prints the
probability of the second class (e.g. PNEUMONIA).
"""
import json
import sys

import torch
import torchvision
from PIL import Image
from safetensors.torch import load_file
from torch import nn

INCEPTION_BLOCKS = [
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c",
]
NORMALISATION = {
    "vgg16": ([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
    "inception_v3": ([0.5, 0.5, 0.5], [0.5, 0.5, 0.5]),
}
RESAMPLING = {"nearest": Image.NEAREST, "bilinear": Image.BILINEAR}
# trainq's smallest input side per backbone, its variable-size default and its size quantum
# (`domain::backbone`, `domain::spec`).
MIN_SIDE = {"vgg16": 32, "inception_v3": 75}
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


def area_resize(image, width, height):
    """trainq's `area`: each output pixel the rounded mean of the whole source pixels its box
    covers (`data.rs` `resize_area`), not Pillow's BOX, which weighs partly covered pixels."""
    source = torch.tensor(list(image.getdata()), dtype=torch.int64).view(image.height, image.width, 3)

    def spans(extent, out):
        for o in range(out):
            start = o * extent // out
            end = min(max(-(-(o + 1) * extent // out), start + 1), extent)
            yield start, end

    out = torch.empty(height, width, 3, dtype=torch.int64)
    for y, (y0, y1) in enumerate(spans(image.height, height)):
        for x, (x0, x1) in enumerate(spans(image.width, width)):
            count = (y1 - y0) * (x1 - x0)
            out[y, x] = (source[y0:y1, x0:x1].sum(dim=(0, 1)) + count // 2) // count
    return out


def pixels(spec, path):
    """The image as trainq feeds it: `[3, H, W]` floats in 0..255."""
    image = Image.open(path).convert("RGB")
    width, height = target_size(spec, image.width, image.height)
    interpolation = spec.get("interpolation", "nearest")
    if interpolation == "area":
        chw = area_resize(image, width, height)
    else:
        resized = image.resize((width, height), RESAMPLING[interpolation])
        chw = torch.tensor(list(resized.getdata()), dtype=torch.int64).view(height, width, 3)
    return chw.permute(2, 0, 1).to(torch.float32)


class GlobalAveragePool(nn.Module):
    def forward(self, x):
        return x.mean(dim=(2, 3))


class TrainqModel(nn.Module):
    """torchvision's feature extractor under its own names, plus `head.N.*`."""

    def __init__(self, spec):
        super().__init__()
        self.backbone = spec["backbone"]
        if self.backbone == "vgg16":
            self.features = torchvision.models.vgg16(weights=None).features
            channels = 512
        elif self.backbone == "inception_v3":
            net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
            for name in INCEPTION_BLOCKS:
                setattr(self, name, getattr(net, name))
            channels = 2048
        else:
            raise SystemExit(f"unknown backbone {self.backbone}")
        # Variable size needs a size-free head ("gap"); any size serves the probe then.
        size = spec["image_size"] or 128
        self.eval()  # the probe below must not need batch statistics
        with torch.no_grad():
            area = self.backbone_forward(torch.zeros(1, 3, size, size)).shape[2:].numel()
        layers, width = [], channels
        for item in spec["head"]:
            if item == "gap":
                layers.append(GlobalAveragePool())
            elif item == "flatten":
                layers.append(nn.Flatten())
                width = channels * area
            elif item == "relu":
                layers.append(nn.ReLU())
            elif item == "batchnorm" or "batchnorm" in item:
                options = item["batchnorm"] if isinstance(item, dict) else {}
                keras_momentum = options.get("momentum", 0.99)
                layers.append(nn.BatchNorm1d(width, eps=options.get("epsilon", 1e-3), momentum=1 - keras_momentum))
            elif "dense" in item:
                layers.append(nn.Linear(width, item["dense"]))
                width = item["dense"]
            elif "dropout" in item:
                layers.append(nn.Dropout(item["dropout"]))
        self.head = nn.Sequential(*layers)

    def backbone_forward(self, x):
        if self.backbone == "vgg16":
            return self.features(x)
        pool = nn.functional.max_pool2d
        for name in INCEPTION_BLOCKS:
            x = getattr(self, name)(x)
            if name in ("Conv2d_2b_3x3", "Conv2d_4a_3x3"):
                x = pool(x, kernel_size=3, stride=2)
        return x

    def forward(self, x):
        return self.head(self.backbone_forward(x))


def main():
    spec_path, weights_path, *images = sys.argv[1:]
    spec = json.load(open(spec_path))
    model = TrainqModel(spec)
    state = load_file(weights_path)
    model.load_state_dict(state, strict=True)
    model.eval()
    print(f"loaded {len(state)} tensors strictly into {spec['backbone']} + head", file=sys.stderr)
    mean, std = NORMALISATION[spec["backbone"]]
    if spec.get("fast_decode"):
        print("note: the job used fast_decode (reduced-scale JPEG decoding); Pillow decodes in full, so these differ a little", file=sys.stderr)
    for path in images:
        x = (pixels(spec, path) / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
        with torch.no_grad():
            logits = model(x.unsqueeze(0))[0]
        probabilities = torch.sigmoid(logits) if logits.numel() == 1 else torch.softmax(logits, 0)
        print(path + "\t" + "\t".join(f"{p:.6f}" for p in probabilities.tolist()))


if __name__ == "__main__":
    main()
