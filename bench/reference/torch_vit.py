"""PyTorch reference for `npm run bench -- torch-reference`: the same ViT-with-registers workloads as
vitreg's forward and train-step benchmarks, timed with PyTorch on the CPU (a benchmark-only tool,
never a dependency of vitreg). Prints one JSON line per case.

`--case export-onnx --out FILE.onnx` instead writes the forward pass as ONNX with torch.onnx.export
(opset 17, dynamic batch, input NCHW), the PyTorch-exported reference of `npm run bench -- forward
--engine onnxruntime`.

Install on Debian: apt-get install -y python3-torch libopenblas0-pthread (run with /usr/bin/python3).
"""
import argparse
import json
import math
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, dim, heads, mlp=4):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.ls1 = nn.Parameter(torch.full((dim,), 1e-5))
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.fc1 = nn.Linear(dim, mlp * dim)
        self.fc2 = nn.Linear(mlp * dim, dim)
        self.ls2 = nn.Parameter(torch.full((dim,), 1e-5))

    def forward(self, x):
        B, N, D = x.shape
        h = self.heads
        qkv = self.qkv(self.norm1(x)).reshape(B, N, 3, h, D // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * (D // h) ** -0.5, qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)).softmax(-1)
        x = x + self.ls1 * self.proj((a @ v).transpose(1, 2).reshape(B, N, D))
        return x + self.ls2 * self.fc2(F.gelu(self.fc1(self.norm2(x))))


class ViT(nn.Module):
    """DINOv2 layout: [CLS + pos, registers, patches + pos], pre-norm blocks, final norm."""

    def __init__(self, dim=384, depth=12, heads=6, patch=14, registers=4, img=224, classes=1000, mlp=4):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        grid = img // patch
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg = nn.Parameter(torch.zeros(1, registers, dim))
        self.pos = nn.Parameter(torch.randn(1, 1 + grid * grid, dim) * 0.02)
        self.blocks = nn.ModuleList(Block(dim, heads, mlp) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        B = x.shape[0]
        x = torch.cat([self.cls.expand(B, -1, -1), x], 1) + self.pos
        x = torch.cat([x[:, :1], self.reg.expand(B, -1, -1), x[:, 1:]], 1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)


def timed(fn, iters):
    fn()  # warm-up
    times = []
    for _ in range(iters):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return sum(times) / len(times)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--case", choices=["forward", "train-step", "export-onnx"], default="forward")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--patch", type=int, default=14)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--out", help="export-onnx: the .onnx file to write")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    model = ViT(dim=a.dim, depth=a.depth, heads=a.heads, patch=a.patch, img=a.size)
    x = torch.randn(a.batch, 3, a.size, a.size)
    if a.case == "export-onnx":
        model.eval()
        torch.onnx.export(model, x, a.out, opset_version=17, input_names=["images"], output_names=["tokens"],
                          dynamic_axes={"images": {0: "batch"}, "tokens": {0: "batch"}}, do_constant_folding=True)
        print(json.dumps({"case": "torch-export-onnx", "engine": f"pytorch {torch.__version__}", "out": a.out,
                          "dim": a.dim, "depth": a.depth, "heads": a.heads, "size": a.size, "patch": a.patch}))
        return
    if a.case == "forward":
        model.eval()

        def step():
            with torch.no_grad():
                model(x)
    else:
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.05)
        y = torch.randint(0, 1000, (a.batch,))

        def step():
            opt.zero_grad()
            loss = F.cross_entropy(model.head(model(x)[:, 0]), y, label_smoothing=0.1)
            loss.backward()
            opt.step()
    sec = timed(step, a.iters)
    print(json.dumps({
        "case": f"torch-{a.case}", "engine": f"pytorch {torch.__version__} cpu", "threads": a.threads,
        "batch": a.batch, "size": a.size, "patch": a.patch, "registers": 4,
        "images_per_s": round(a.batch / sec, 3), "seconds_per_batch": round(sec, 3),
    }))


if __name__ == "__main__":
    main()
