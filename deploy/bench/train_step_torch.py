"""PyTorch-eager baseline for `trainq-worker bench`.

Times the same training step the Rust worker times: torchvision-style VGG16
`features` + the Q1 head (GAP -> Linear 512 -> BN -> ReLU -> Linear 128 ->
Linear 1), BCEWithLogits loss, RMSprop(lr=1e-5, alpha=0.9, eps=1e-7), on a
fixed random uint8 batch that is converted/normalised inside every step.
Frozen prefixes (--train head|block5) run under torch.no_grad(), as in Rust.
`--precision bf16` on CUDA is what trainq's `precision: auto` does there: bf16
autocast, channels-last model and input, cuDNN benchmark. Like the Rust bench,
the timed loop never syncs with the host: one sync after it.
Prints one JSON line to stdout.
"""
import argparse
import json
import os
import time

import torch
from torch import nn

CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]
BLOCK5_START = 24  # features[24:31] is block 5


def vgg16_features():
    layers, c = [], 3
    for v in CFG:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2))
        else:
            conv = nn.Conv2d(c, v, 3, padding=1)
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
            layers += [conv, nn.ReLU(inplace=True)]
            c = v
    return nn.Sequential(*layers)


def dense(i, o):
    lin = nn.Linear(i, o)
    nn.init.xavier_uniform_(lin.weight)
    nn.init.zeros_(lin.bias)
    return lin


class Net(nn.Module):
    def __init__(self, train):
        super().__init__()
        self.features = vgg16_features()
        self.head = nn.Sequential(
            dense(512, 512), nn.BatchNorm1d(512, eps=1e-3, momentum=0.01), nn.ReLU(),
            dense(512, 128), dense(128, 1))
        # Number of leading `features` layers that are frozen and run under no_grad.
        self.frozen = {"all": 0, "block5": BLOCK5_START, "head": len(self.features)}[train]
        for p in self.features[: self.frozen].parameters():
            p.requires_grad_(False)

    def forward(self, x):
        if self.frozen:
            with torch.no_grad():
                x = self.features[: self.frozen](x)
        x = self.features[self.frozen:](x)
        return self.head(x.mean(dim=(2, 3)))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--image-size", type=int, default=128)
    ap.add_argument("--batch-size", type=int, default=20)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--train", choices=["all", "head", "block5"], default="all")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--cuda", action="store_true")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    a = ap.parse_args()
    bf16 = a.precision == "bf16"

    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    dev = torch.device("cuda" if a.cuda else "cpu")

    model = Net(a.train).to(dev).train()
    if bf16 and a.cuda:
        torch.backends.cudnn.benchmark = True
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.RMSprop([p for p in model.parameters() if p.requires_grad],
                              lr=1e-5, alpha=0.9, eps=1e-7)
    loss_fn = nn.BCEWithLogitsLoss()
    mean = torch.tensor([0.485, 0.456, 0.406], device=dev).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225], device=dev).view(1, 3, 1, 1)
    images = torch.randint(0, 256, (a.batch_size, 3, a.image_size, a.image_size),
                           dtype=torch.uint8, device=dev)
    if bf16 and a.cuda:
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 2, (a.batch_size, 1), device=dev).float()

    def step():
        x = (images.float() / 255.0 - mean) / std
        with torch.autocast(dev.type, dtype=torch.bfloat16, enabled=bf16):
            loss = loss_fn(model(x).float(), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return loss

    for _ in range(a.warmup):
        step().item()
    t0 = time.perf_counter()
    for _ in range(a.steps):
        loss = step()
    loss.item()
    secs = time.perf_counter() - t0

    print(json.dumps({
        "impl": "pytorch eager", "torch": torch.__version__, "image_size": a.image_size,
        "batch_size": a.batch_size, "train": a.train, "threads": a.threads, "steps": a.steps,
        "precision": a.precision, "seconds": round(secs, 6),
        "images_per_sec": round(a.batch_size * a.steps / secs, 3),
    }))


if __name__ == "__main__":
    main()
