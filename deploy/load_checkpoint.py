"""Loads a trainq checkpoint in plain PyTorch, strictly, and optionally exports it to ONNX.

Builds the torchvision backbone and the spec's head from a job's `spec.json`, loads
`final.safetensors` (or `phase1.safetensors`) with `strict=True`, and optionally predicts images
with the same preprocessing trainq used (`preprocess.py`: the full decode, trainq's size, the
spec's interpolation, the backbone's mean/std). A job with `fast_decode` decoded large JPEGs at a
reduced scale, which Pillow cannot; its predictions here differ a little.

The predictions run as the job's own evaluation ran: in its precision (bf16 autocast or float32,
`--precision`), with the worker's memory layout per block, and from the activations it cached at
its last phase's cut, rounded to their stored dtype (`src/worker/features.rs`). A bf16 job's
probabilities are therefore reproduced within float summation order, not only within bf16's
rounding (up to 1.3e-3 from a float32 run); `preprocess.network_input` normalises with the
worker's own float32 operations, since a last-bit difference there is rounded the other way by
a bf16 job's first convolution.

    python deploy/load_checkpoint.py spec.json final.safetensors [--precision TEXT] [--onnx model.onnx] [image.jpeg ...]

`--precision` is what the job recorded it computed in (`progress.precision` in its JSON, e.g.
`bf16 autocast (auto: the CPU has AMX-BF16)` or `bf16 autocast, channels-last (asked for)`), or
simply `fp32`, `bf16` or `auto`. Without it, the spec's `precision` is resolved as the worker
resolves it on this machine: `auto` is bf16 where the CPU has AMX-BF16 or AVX512-BF16.

Prints one line per image: `<path>\t<probability of each class>` (8 decimals); a binary model
prints the probability of the second class (e.g. PNEUMONIA).

`--onnx model.onnx` also writes the network as one self-contained ONNX file (torch.onnx; needs
the `onnx` and `onnxscript` packages). The exported graph computes in float32 whatever the job's
precision (onnxruntime's CPU kernels have no bf16 convolutions), so a bf16 job's ONNX predictions
differ from its own by bf16's rounding (up to about 1.3e-3). It takes `pixels`, the preprocessed `[N, 3, H, W]` float32
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


# The worker's blocks (`BackboneInfo::blocks`): the units a phase trains and a cut falls between.
BLOCK_NAMES = {
    "vgg16": ["block1", "block2", "block3", "block4", "block5"],
    "inception_v3": ["stem"] + INCEPTION_BLOCKS[5:],
    "resnet50": ["stem", "layer1", "layer2", "layer3", "layer4"],
    "densenet121": ["stem", "denseblock1", "denseblock2", "denseblock3", "denseblock4"],
    "efficientnet_b0": ["stem", "stage1", "stage2", "stage3", "stage4", "stage5", "stage6", "stage7", "top"],
}


class GlobalAveragePool(nn.Module):
    def forward(self, x):
        # In float32 whatever the input's dtype, as the worker's `gap` (`mean_dim(…, Kind::Float)`).
        return x.mean(dim=(2, 3)) if x.dtype == torch.float32 else x.mean(dim=(2, 3), dtype=torch.float32)


class Numerics:
    """How a job computed (`src/worker/precision.rs`): under bf16 autocast or in float32, and with
    the whole network channels-last (a GPU job, or bf16 asked for) or the layout chosen per block
    (frozen blocks channels-last, trained ones as they come: a CPU job)."""

    def __init__(self, bf16, channels_last):
        self.bf16 = bf16
        self.channels_last = channels_last

    @staticmethod
    def of_job(spec, recorded):
        """From the job's recorded precision text, else from its spec as this machine resolves it."""
        text = recorded or spec.get("precision", "auto")
        if text == "auto":
            flags = open("/proc/cpuinfo").read() if sys.platform == "linux" else ""
            flags = next((line.split(":", 1)[1].split() for line in flags.splitlines() if line.startswith("flags")), [])
            bf16 = ("amx_bf16" in flags and "amx_tile" in flags) or "avx512_bf16" in flags
            return Numerics(bf16, False)
        if text == "bf16":
            # What a job that asked for bf16 runs (and a GPU job): channels-last throughout.
            return Numerics(True, True)
        if text.startswith("bf16"):
            return Numerics(True, "channels-last" in text)
        if text.startswith("fp32"):
            return Numerics(False, False)
        raise SystemExit(f"--precision: {text!r} is not a precision trainq records (fp32, bf16, auto, or a job's `progress.precision`)")

    def describe(self):
        if not self.bf16:
            return "fp32"
        return "bf16 autocast, channels-last" if self.channels_last else "bf16 autocast (layout per block)"


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

    def worker_blocks(self):
        """The backbone as the worker's blocks (`BLOCK_NAMES`), input side first."""
        if self.backbone == "vgg16":
            layers = list(self.features)
            ends = [index + 1 for index, layer in enumerate(layers) if isinstance(layer, nn.MaxPool2d)]
            return [nn.Sequential(*layers[start:end]) for start, end in zip([0] + ends[:-1], ends)]
        if self.backbone == "efficientnet_b0":
            # features.0 is `stem`, features.1…7 the stages, features.8 `top`.
            return list(self.features)
        if self.backbone == "resnet50":
            return [nn.Sequential(self.conv1, self.bn1, self.relu, self.maxpool), self.layer1, self.layer2, self.layer3, self.layer4]
        if self.backbone == "densenet121":
            # `denseblockN` includes the transition after it; `denseblock4` ends with norm5 and its ReLU.
            f = self.features
            return [
                nn.Sequential(f.conv0, f.norm0, f.relu0, f.pool0),
                nn.Sequential(f.denseblock1, f.transition1),
                nn.Sequential(f.denseblock2, f.transition2),
                nn.Sequential(f.denseblock3, f.transition3),
                nn.Sequential(f.denseblock4, f.norm5, nn.ReLU()),
            ]

        def stem(x):
            for name in INCEPTION_BLOCKS[:5]:
                x = getattr(self, name)(x)
                if name in ("Conv2d_2b_3x3", "Conv2d_4a_3x3"):
                    x = nn.functional.max_pool2d(x, kernel_size=3, stride=2)
            return x

        return [stem] + [getattr(self, name) for name in INCEPTION_BLOCKS[5:]]

    def backbone_forward(self, x):
        for block in self.worker_blocks():
            x = block(x)
        return x

    def forward(self, x):
        return self.head(self.backbone_forward(x))

    def predict_as_the_job(self, x, spec, numerics):
        """The logits (float32) of a normalised batch as the job's evaluation computed them
        (`evaluate.rs`, `model::Network::features` and `forward_from`): under its autocast, each
        block in the worker's layout, and through the activations cached at the last phase's cut,
        rounded to the dtype they were stored in."""
        blocks, names = self.worker_blocks(), BLOCK_NAMES[self.backbone]
        last = spec["phases"][-1]["train"]
        trained = [last == "all" or (isinstance(last, list) and name in last) for name in names]
        first_trained = trained.index(True) if True in trained else len(blocks)
        cut = first_trained if spec.get("cache_features", True) and first_trained > 0 else None
        pooled = cut == len(blocks) and spec["head"][:1] == ["gap"]

        def run(x, start, end):
            # `model::per_block_layout`: a CPU network's frozen blocks run channels-last, its trained
            # ones in the caller's layout, which comes back contiguous.
            relayout = not x.is_contiguous(memory_format=torch.channels_last)
            for index in range(start, end):
                if relayout:
                    layout = torch.contiguous_format if trained[index] else torch.channels_last
                    x = x.contiguous(memory_format=layout)
                x = blocks[index](x)
            return x.contiguous() if relayout else x

        def channels_last(x):
            return x.contiguous(memory_format=torch.channels_last) if numerics.channels_last and x.dim() == 4 else x

        autocast = torch.autocast("cpu", dtype=torch.bfloat16) if numerics.bf16 else contextlib.nullcontext()
        with torch.no_grad(), autocast:
            x = channels_last(x)
            if cut is None:
                return self.head(run(x, 0, len(blocks))).float()
            cached = run(x, 0, cut)
            if pooled:
                cached = self.head[0](cached)
            # `features::dtype`: the cache holds bf16 when the forward passes run in bf16.
            cached = cached.to(torch.bfloat16 if numerics.bf16 else torch.float32).contiguous()
            x = run(channels_last(cached), cut, len(blocks))
            return self.head[1:](x).float() if pooled else self.head(x).float()


class Probabilities(nn.Module):
    """The network and its output activation, as exported: sigmoid for one logit, else softmax."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, pixels):
        return probabilities_of(self.model(pixels))


def probabilities_of(logits):
    """The output activation trainq applies: sigmoid for one logit, else softmax."""
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
    parser.add_argument("--precision", metavar="TEXT",
                        help="the job's recorded precision (its `progress.precision`), or fp32, bf16 or auto")
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
    numerics = Numerics.of_job(spec, args.precision)
    print(f"predicting in {numerics.describe()}, as the job did", file=sys.stderr)
    if numerics.channels_last:
        # The worker lays every convolution weight out channels-last too (`set_channels_last`).
        model = model.to(memory_format=torch.channels_last)
    for path in args.images:
        logits = model.predict_as_the_job(torch.from_numpy(network_input(spec, path)).unsqueeze(0), spec, numerics)
        row = probabilities_of(logits)[0]
        print(path + "\t" + "\t".join(f"{p:.8f}" for p in row.tolist()))


if __name__ == "__main__":
    main()
