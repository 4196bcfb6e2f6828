"""Which memory layout is faster for each kind of block on this CPU, in float32 and bf16 autocast.

Frozen blocks in inference (the activation build: VGG16 blocks 1-4, InceptionV3 up to Mixed_7a, at
128 px) and trained blocks on cached activations (VGG16 block5 on 8x8, InceptionV3 Mixed_7b-7c on
2x2, with a Q1-like head, RMSprop), NCHW against channels-last, batch 20. trainq's per-block layout
(`per_block_layout` in src/worker/model/mod.rs) follows what this measured.

    .torch-venv/bin/python deploy/bench/cpu_layout.py [threads]
"""
import re
import sys
import time

import torch
import torchvision

threads = int(sys.argv[1]) if len(sys.argv) > 1 else 1
torch.set_num_threads(threads)
torch.manual_seed(0)
cpuinfo = open("/proc/cpuinfo").read()
model = re.search(r"model name\s*:\s*(.*)", cpuinfo)
flags = re.search(r"^flags\s*:\s*(.*)$", cpuinfo, re.M)
wanted = ("avx2", "avx512f", "avx512_bf16", "amx_bf16")
print(f"cpu_layout: CPU {model.group(1) if model else '?'}, flags {' '.join(f for f in flags.group(1).split() if f in wanted) if flags else '?'}; "
      f"torch {torch.__version__}, {threads} thread(s), batch 20")
B = 20


def images_per_sec(step, steps, warmup):
    for _ in range(warmup):
        step()
    started = time.perf_counter()
    for _ in range(steps):
        step()
    return B * steps / (time.perf_counter() - started)


def layout(module, x, channels_last):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return module.to(memory_format=fmt), x.contiguous(memory_format=fmt)


def frozen(name, module, x):
    for p in module.parameters():
        p.requires_grad_(False)
    module.eval()
    for dtype in ("fp32", "bf16"):
        speeds = []
        for channels_last in (False, True):
            m, xi = layout(module, x, channels_last)

            def step():
                with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                    m(xi)
            speeds.append(images_per_sec(step, 3, 1))
        print(f"  {name}, frozen (inference), {dtype}: NCHW {speeds[0]:.1f} img/s, channels-last {speeds[1]:.1f} img/s ({speeds[1] / speeds[0]:.2f}x)", flush=True)


def trained(name, module, head, a):
    module.train()
    for p in module.parameters():
        p.requires_grad_(True)
    y = torch.randint(0, 2, (B,)).float()
    optimizer = torch.optim.RMSprop(list(module.parameters()) + list(head.parameters()), lr=1e-5)
    for dtype in ("fp32", "bf16"):
        speeds = []
        for channels_last in (False, True):
            m, ai = layout(module, a, channels_last)

            def step():
                with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == "bf16"):
                    loss = torch.nn.functional.binary_cross_entropy_with_logits(head(m(ai)).squeeze(1).float(), y)
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            speeds.append(images_per_sec(step, 10, 2))
        print(f"  {name}, trained, {dtype}: NCHW {speeds[0]:.1f} img/s, channels-last {speeds[1]:.1f} img/s ({speeds[1] / speeds[0]:.2f}x)", flush=True)


def head(channels):
    return torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(channels, 512),
                               torch.nn.BatchNorm1d(512), torch.nn.ReLU(), torch.nn.Linear(512, 128), torch.nn.Linear(128, 1))


x = torch.randn(B, 3, 128, 128)
vgg = torchvision.models.vgg16().features
frozen("VGG16 blocks 1-4 at 128 px", vgg[:24], x)
trained("VGG16 block5 + head on 8x8", vgg[24:], head(512), torch.randn(B, 512, 8, 8))

net = torchvision.models.inception_v3(weights=None, aux_logits=False, init_weights=False)
names = ["Conv2d_1a_3x3", "Conv2d_2a_3x3", "Conv2d_2b_3x3", "maxpool1", "Conv2d_3b_1x1", "Conv2d_4a_3x3", "maxpool2",
         "Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e", "Mixed_7a"]
bottom = torch.nn.Sequential(*[getattr(net, name) for name in names])
frozen("InceptionV3 up to Mixed_7a at 128 px", bottom, x)
with torch.no_grad():
    cut = bottom.eval()(x)
trained(f"InceptionV3 Mixed_7b-7c + head on {cut.shape[2]}x{cut.shape[3]}", torch.nn.Sequential(net.Mixed_7b, net.Mixed_7c), head(2048), cut)
