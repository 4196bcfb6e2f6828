"""Loads a trainq checkpoint in plain PyTorch, strictly, and optionally exports it to ONNX.

Builds the torchvision backbone and the spec's head from a job's `spec.json`, loads
`final.safetensors` (or `phase1.safetensors`) with `strict=True`, and optionally predicts images
with the same preprocessing trainq used (`preprocess.py`: the full decode, trainq's size, the
spec's interpolation, the backbone's mean/std). A job with `fast_decode` decoded large JPEGs at a
reduced scale, which Pillow cannot; its predictions here differ a little.

    python deploy/load_checkpoint.py spec.json final.safetensors [--onnx model.onnx] [image.jpeg ...]

Prints one line per image: `<path>\t<probability of each class>` (8 decimals); a binary model
prints the probability of the second class (e.g. PNEUMONIA).

`--onnx model.onnx` also writes the network as one self-contained ONNX file (torch.onnx; needs
the `onnx` and `onnxscript` packages). It takes `pixels`, the preprocessed `[N, 3, H, W]` float32
tensor (`preprocess.network_input`, batched), with a dynamic batch and, for a variable-size job
(`image_size` null), a dynamic height and width; it returns `probabilities` ([N, 1] sigmoid for a
binary model, [N, classes] softmax otherwise), and carries the spec in its metadata
(`trainq_spec`), which is all `onnx_predict.py` needs to preprocess for it.
"""
import argparse
import contextlib
import json
import sys

import torch
import torchvision
from safetensors.torch import load_file
from torch import nn

from preprocess import MIN_SIDE, QUANTUM, network_input

INCEPTION_BLOCKS = [
    "Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "Conv2d_3b_1x1", "Conv2d_4a_3x3",
    "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e",
    "Mixed_7a", "Mixed_7b", "Mixed_7c",
]
# torchvision's ResNet modules before `avgpool` and `fc`, in forward order (relu and maxpool hold
# no tensors).
RESNET_MODULES = ["conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4"]


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
        elif self.backbone == "resnet50":
            net = torchvision.models.resnet50(weights=None)
            for name in RESNET_MODULES:
                setattr(self, name, getattr(net, name))
            channels = 2048
        elif self.backbone == "densenet121":
            # `features` ends with norm5; torchvision's DenseNet.forward applies the ReLU after it.
            self.features = torchvision.models.densenet121(weights=None).features
            channels = 1024
        elif self.backbone == "efficientnet_b0":
            # eval() turns its stochastic depth off, as trainq's evaluation does.
            self.features = torchvision.models.efficientnet_b0(weights=None).features
            channels = 1280
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
        if self.backbone in ("vgg16", "efficientnet_b0"):
            return self.features(x)
        if self.backbone == "densenet121":
            return nn.functional.relu(self.features(x))
        if self.backbone == "resnet50":
            for name in RESNET_MODULES:
                x = getattr(self, name)(x)
            return x
        pool = nn.functional.max_pool2d
        for name in INCEPTION_BLOCKS:
            x = getattr(self, name)(x)
            if name in ("Conv2d_2b_3x3", "Conv2d_4a_3x3"):
                x = pool(x, kernel_size=3, stride=2)
        return x

    def forward(self, x):
        return self.head(self.backbone_forward(x))


class Probabilities(nn.Module):
    """The network and its output activation, as exported: sigmoid for one logit, else softmax."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels):
        logits = self.model(pixels)
        return torch.sigmoid(logits) if logits.shape[1] == 1 else torch.softmax(logits, 1)


def export_onnx(model, spec, path):
    """Writes `model` (with its activation) to `path` as a single ONNX file, spec in its metadata."""
    try:
        import onnx  # noqa: F401  (torch.onnx's exporter needs both)
        import onnxscript  # noqa: F401
    except ImportError as missing:
        raise SystemExit(f"--onnx needs the onnx and onnxscript packages ({missing}); run deploy/setup-libtorch.sh")
    shapes = {0: torch.export.Dim("batch")}
    if spec["image_size"]:
        height = width = spec["image_size"]
    else:
        # Any size the backbone takes (trainq's own are multiples of 32 from 32 for VGG16 and
        # EfficientNet-B0, from 96 for Inception); the example is rectangular so that height and width stay two dimensions.
        least = MIN_SIDE[spec["backbone"]]
        height, width = 2 * QUANTUM * -(-least // QUANTUM), 3 * QUANTUM * -(-least // QUANTUM)
        shapes.update({2: torch.export.Dim("height", min=least), 3: torch.export.Dim("width", min=least)})
    # A batch of two: the exporter would fix a dimension of 1.
    example = torch.zeros(2, 3, height, width)
    # The exporter reports its progress on stdout, which carries the predictions.
    with contextlib.redirect_stdout(sys.stderr):
        program = torch.onnx.export(Probabilities(model).eval(), (example,), input_names=["pixels"],
                                    output_names=["probabilities"], dynamic_shapes=(shapes,), dynamo=True)
    program.model.metadata_props["trainq_spec"] = json.dumps(spec)
    program.save(path, external_data=False)
    print(f"wrote {path}", file=sys.stderr)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("spec", help="the job's spec.json")
    parser.add_argument("weights", help="final.safetensors or phase1.safetensors")
    parser.add_argument("images", nargs="*", help="images to predict")
    parser.add_argument("--onnx", metavar="PATH", help="also export the network to this ONNX file")
    args = parser.parse_intermixed_args()
    spec = json.load(open(args.spec))
    model = TrainqModel(spec)
    state = load_file(args.weights)
    model.load_state_dict(state, strict=True)
    model.eval()
    print(f"loaded {len(state)} tensors strictly into {spec['backbone']} + head", file=sys.stderr)
    if args.onnx:
        export_onnx(model, spec, args.onnx)
    if spec.get("fast_decode"):
        print("note: the job used fast_decode (reduced-scale JPEG decoding); Pillow decodes in full, so these differ a little", file=sys.stderr)
    probabilities = Probabilities(model).eval()
    for path in args.images:
        with torch.no_grad():
            row = probabilities(torch.from_numpy(network_input(spec, path)).unsqueeze(0))[0]
        print(path + "\t" + "\t".join(f"{p:.8f}" for p in row.tolist()))


if __name__ == "__main__":
    main()
