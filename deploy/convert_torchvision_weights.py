"""Write torchvision's own ImageNet weights as a safetensors file trainq can load.

For admins who prefer torchvision's downloads to `trainq weights fetch` (which takes the same
weights from Hugging Face), and the only way to get EfficientNet-B0's: no safetensors copy of
torchvision's EfficientNet-B0 weights is published, so `trainq weights fetch efficientnet_b0`
without `--url` refuses and points here:

    python deploy/convert_torchvision_weights.py vgg16 /srv/weights
    python deploy/convert_torchvision_weights.py inception_v3 /srv/weights
    python deploy/convert_torchvision_weights.py efficientnet_b0 /srv/weights

writes OUT_DIR/<backbone>.safetensors. The whole state_dict is kept, with torchvision's names:
trainq ignores the classifier tensors (`classifier.*`, `fc.*`, `AuxLogits.*`). torchvision
downloads its `.pth` file into its cache (~/.cache/torch/hub/checkpoints) first. Needs `torch`,
`torchvision` and `safetensors` (pip install torch torchvision safetensors).
"""

import argparse
import pathlib

import torch
import torchvision
from safetensors.torch import save_file

BUILDERS = {
    "vgg16": torchvision.models.vgg16,
    "inception_v3": torchvision.models.inception_v3,
    "resnet50": torchvision.models.resnet50,
    "densenet121": torchvision.models.densenet121,
    "efficientnet_b0": torchvision.models.efficientnet_b0,
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("backbone", choices=sorted(BUILDERS))
    parser.add_argument("out_dir", type=pathlib.Path)
    args = parser.parse_args()

    model = BUILDERS[args.backbone](weights="IMAGENET1K_V1")
    # Floats become contiguous float32; batch norm's int64 `num_batches_tracked` counters keep their type.
    tensors = {
        name: (tensor.float() if tensor.is_floating_point() else tensor).contiguous()
        for name, tensor in model.state_dict().items()
    }
    args.out_dir.mkdir(parents=True, exist_ok=True)
    target = args.out_dir / f"{args.backbone}.safetensors"
    partial = target.with_name(target.name + ".partial")
    save_file(tensors, str(partial))
    partial.replace(target)  # atomic: the server never sees a half-written file
    print(f"wrote {target} ({len(tensors)} tensors)")


if __name__ == "__main__":
    main()
