"""PyTorch reference for `npm run bench -- torch-reference` and `train-step`: the same ViT-with-registers
workloads as vitreg's forward and train-step benchmarks, timed with PyTorch on the CPU (a benchmark-only
tool, never a dependency of vitreg). Prints one JSON line per case.

The model is vitreg's (packages/registers/src/model.ts, DINOv2's layout): patch embedding, CLS (with or
without a positional slot: DINOv2 / DeiT-III), registers without positional embedding, pre-norm blocks
with qkv bias, LayerScale, an MLP (exact GELU) or DINOv2's fused SwiGLU, drop path per image (timm) or
DINOv2's batch-subset rule above 0.1, final LayerNorm. `--case train-step` is one supervised step as
vitreg's trainer runs it: the classifier on CLS, soft-target cross-entropy with label smoothing (or BCE),
backward, global gradient clipping, AdamW with vitreg's / DINOv2's parameter groups (layer-wise lr decay,
no weight decay on biases, norms and LayerScale). `--precision bf16` runs the forward and the loss under
`torch.autocast('cpu', torch.bfloat16)` (float32 master weights and optimiser), reported only where the
CPU has AVX-512 BF16 (`--force-bf16` runs it anyway). `--count-flops` adds the matrix-product FLOPs of
one step as torch.profiler counts them (mm / addmm / bmm / conv2d, forward and backward).

`--case export-onnx --out FILE.onnx` instead writes the forward pass as ONNX with torch.onnx.export
(opset 17, dynamic batch, input NCHW), the PyTorch-exported reference of `npm run bench -- forward
--engine onnxruntime`.

bench/reference/torch_dinov2_step.py imports this model for the DINOv2 step.

Install on Debian: apt-get install -y python3-torch libopenblas0-pthread (run with /usr/bin/python3).
"""
import argparse
import json
import math
import os
import resource
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


def drop_path(x, rate):
    """timm's DropPath: each image's branch dropped with probability rate, the kept ones scaled by 1 / (1 - rate)."""
    keep = 1 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


def residual_subset(x, fn, rate, compute):
    """DINOv2's drop_add_residual_stochastic_depth: the branch on a random subset of max(floor(B (1 - rate)), 1)
    images, added back scaled by B / subset. compute='full' runs the branch on every image and multiplies
    the dropped ones by 0 (vitreg's way: the same values and gradients, without the compute saving)."""
    b = x.shape[0]
    subset = max(int(b * (1 - rate)), 1)
    keep = torch.randperm(b, device=x.device)[:subset]
    scale = b / subset
    if compute == "full":
        factors = x.new_zeros(b)
        factors[keep] = scale
        return x + fn(x) * factors.view(b, 1, 1)
    res = fn(x[keep])
    return torch.index_add(x.flatten(1), 0, keep, res.flatten(1).to(x.dtype), alpha=scale).view_as(x)


class LayerScale(nn.Module):
    def __init__(self, dim, init):
        super().__init__()
        self.gamma = nn.Parameter(torch.full((dim,), float(init)))

    def forward(self, x):
        return x * self.gamma


class Attention(nn.Module):
    def __init__(self, dim, heads, qkv_bias=True, proj_bias=True):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim, bias=proj_bias)

    def forward(self, x):
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.heads, D // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0] * self.scale, qkv[1], qkv[2]
        a = (q @ k.transpose(-2, -1)).softmax(-1)
        return self.proj((a @ v).transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim, hidden, bias=True):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden, bias=bias)
        self.fc2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x):
        return self.fc2(F.gelu(self.fc1(x)))


class SwiGLU(nn.Module):
    """DINOv2's SwiGLUFFNFused: hidden = (int(2/3 hidden) + 7) // 8 * 8, w12 -> silu(x1) * x2 -> w3."""

    def __init__(self, dim, hidden, bias=True):
        super().__init__()
        h = (int(hidden * 2 / 3) + 7) // 8 * 8
        self.w12 = nn.Linear(dim, 2 * h, bias=bias)
        self.w3 = nn.Linear(h, dim, bias=bias)

    def forward(self, x):
        x1, x2 = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(x1) * x2)


class Block(nn.Module):
    def __init__(self, dim, heads, mlp_ratio=4.0, ffn="mlp", layerscale=1e-5, qkv_bias=True, drop=0.0,
                 batch_subset=True, eps=1e-6, drop_compute="subset"):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, heads, qkv_bias)
        self.ls1 = LayerScale(dim, layerscale) if layerscale is not None else nn.Identity()
        self.norm2 = nn.LayerNorm(dim, eps=eps)
        self.mlp = (SwiGLU if ffn == "swiglu" else Mlp)(dim, int(dim * mlp_ratio))
        self.ls2 = LayerScale(dim, layerscale) if layerscale is not None else nn.Identity()
        self.drop = drop
        self.batch_subset = batch_subset
        self.drop_compute = drop_compute

    def forward(self, x):
        def attn(y):
            return self.ls1(self.attn(self.norm1(y)))

        def ffn(y):
            return self.ls2(self.mlp(self.norm2(y)))

        if self.training and self.batch_subset and self.drop > 0.1:
            x = residual_subset(x, attn, self.drop, self.drop_compute)
            return residual_subset(x, ffn, self.drop, self.drop_compute)
        if self.training and self.drop > 0:
            x = x + drop_path(attn(x), self.drop)
            return x + drop_path(ffn(x), self.drop)
        x = x + attn(x)
        return x + ffn(x)


class ViT(nn.Module):
    """vitreg's / DINOv2's layout: [CLS (+ pos), registers, patches + pos], pre-norm blocks, final norm.
    pos_embed_cls=False is DeiT-III's (no positional slot for CLS). Other input sizes than `img` resample the
    positional grid as DINOv2 does (bicubic; scale_factor (n + offset) / grid when offset > 0, else to the
    size, with antialias when asked)."""

    def __init__(self, dim=384, depth=12, heads=6, patch=14, registers=4, img=224, classes=1000, mlp_ratio=4.0,
                 ffn="mlp", layerscale=1e-5, qkv_bias=True, drop_path=0.0, drop_uniform=True, batch_subset=True,
                 pos_embed_cls=True, interp_offset=0.0, interp_antialias=False, mask_token=False,
                 drop_compute="subset"):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.patch_size = patch
        grid = img // patch
        self.grid = grid
        self.pos_embed_cls = pos_embed_cls
        self.interp_offset = interp_offset
        self.interp_antialias = interp_antialias
        self.cls = nn.Parameter(torch.zeros(1, 1, dim))
        self.reg = nn.Parameter(torch.zeros(1, registers, dim)) if registers > 0 else None
        self.pos = nn.Parameter(torch.randn(1, (1 if pos_embed_cls else 0) + grid * grid, dim) * 0.02)
        self.mask_token = nn.Parameter(torch.zeros(1, dim)) if mask_token else None
        rates = [drop_path if drop_uniform else drop_path * i / max(depth - 1, 1) for i in range(depth)]
        self.blocks = nn.ModuleList(
            Block(dim, heads, mlp_ratio, ffn, layerscale, qkv_bias, rates[i], batch_subset, drop_compute=drop_compute)
            for i in range(depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes) if classes > 0 else None
        self.registers = registers

    def patch_pos(self, h, w):
        """The positional embedding of the patches for an h x w grid (DINOv2's interpolate_pos_encoding)."""
        pos = self.pos[:, 1:] if self.pos_embed_cls else self.pos
        if h == self.grid and w == self.grid:
            return pos
        g = self.grid
        grid = pos.reshape(1, g, g, -1).permute(0, 3, 1, 2)
        if self.interp_offset > 0:
            sf = ((h + self.interp_offset) / g, (w + self.interp_offset) / g)
            grid = F.interpolate(grid, scale_factor=sf, mode="bicubic", antialias=self.interp_antialias)
        else:
            grid = F.interpolate(grid, size=(h, w), mode="bicubic", antialias=self.interp_antialias)
        return grid.permute(0, 2, 3, 1).reshape(1, h * w, -1)

    def features(self, x, masks=None):
        """Normalised tokens [B, 1 + R + P, D] of images x [B, 3, H, W]; masks [B, P] (bool) -> mask token."""
        x = self.patch(x)
        h, w = x.shape[-2:]
        x = x.flatten(2).transpose(1, 2)
        if masks is not None:
            x = torch.where(masks.unsqueeze(-1), self.mask_token.to(x.dtype).unsqueeze(0), x)
        B = x.shape[0]
        if self.pos_embed_cls:
            x = torch.cat([self.cls.expand(B, -1, -1) + self.pos[:, :1], x + self.patch_pos(h, w)], 1)
        else:
            x = torch.cat([self.cls.expand(B, -1, -1), x + self.patch_pos(h, w)], 1)
        if self.reg is not None:
            x = torch.cat([x[:, :1], self.reg.expand(B, -1, -1), x[:, 1:]], 1)
        for blk in self.blocks:
            x = blk(x)
        return self.norm(x)

    def forward(self, x):
        return self.features(x)


def model_args(p):
    """The model flags shared by this script and torch_dinov2_step.py."""
    p.add_argument("--dim", type=int, default=384)
    p.add_argument("--depth", type=int, default=12)
    p.add_argument("--heads", type=int, default=6)
    p.add_argument("--patch", type=int, default=14)
    p.add_argument("--registers", type=int, default=4)
    p.add_argument("--mlp-ratio", type=float, default=4.0)
    p.add_argument("--ffn", choices=["mlp", "swiglu"], default="mlp")
    p.add_argument("--layerscale", type=float, default=1e-5, help="LayerScale init; <= 0 for none")
    p.add_argument("--no-qkv-bias", action="store_true")
    p.add_argument("--drop-path", type=float, default=0.0)
    p.add_argument("--drop-path-linear", action="store_true", help="rates rising linearly (default: uniform)")
    p.add_argument("--no-batch-subset", action="store_true", help="per-image drop path also above 0.1 (DeiT-III)")
    p.add_argument("--drop-path-compute", choices=["subset", "full"], default="full",
                   help="batch-subset blocks: DINOv2's compute on the subset, or vitreg's on every image")
    p.add_argument("--no-pos-cls", action="store_true", help="no positional slot for CLS (DeiT-III)")
    p.add_argument("--interp-offset", type=float, default=0.0)
    p.add_argument("--interp-antialias", action="store_true")
    p.add_argument("--img", type=int, default=None, help="the positional grid's image size (default --size)")


def build_model(a, classes, mask_token=False):
    return ViT(dim=a.dim, depth=a.depth, heads=a.heads, patch=a.patch, registers=a.registers,
               img=a.img or a.size, classes=classes, mlp_ratio=a.mlp_ratio, ffn=a.ffn,
               layerscale=a.layerscale if a.layerscale > 0 else None, qkv_bias=not a.no_qkv_bias,
               drop_path=a.drop_path, drop_uniform=not a.drop_path_linear, batch_subset=not a.no_batch_subset,
               pos_embed_cls=not a.no_pos_cls, interp_offset=a.interp_offset, interp_antialias=a.interp_antialias,
               mask_token=mask_token, drop_compute=a.drop_path_compute)


def no_decay(name, param):
    """vitreg's `dinov2` weight-decay rule (DINOv2's get_params_groups_with_decay): biases, norms, LayerScale."""
    return name.endswith(".bias") or "norm" in name or "gamma" in name


def layer_id(name, depth):
    if name.startswith("blocks."):
        return int(name.split(".")[1]) + 1
    if name.startswith(("norm.",)):
        return depth + 1
    if name.startswith(("cls", "reg", "pos", "patch", "mask_token")):
        return 0
    return depth + 1


def param_groups(named, depth, layer_decay=0.9, patch_mult=0.2, prefix=""):
    """AdamW groups fused by (lr multiplier, weight-decay multiplier), as DINOv2's fuse_params_groups."""
    groups = {}
    for name, p in named:
        if not p.requires_grad:
            continue
        lr = layer_decay ** (depth + 1 - layer_id(name, depth)) if prefix in ("", "backbone") else 1.0
        if name.startswith("patch"):
            lr *= patch_mult
        wd = 0.0 if no_decay(name, p) else 1.0
        groups.setdefault((lr, wd), []).append(p)
    return [{"params": ps, "lr_mult": lr, "wd_mult": wd} for (lr, wd), ps in groups.items()]


def set_lr_wd(opt, lr, wd):
    for g in opt.param_groups:
        g["lr"] = lr * g["lr_mult"]
        g["weight_decay"] = wd * g["wd_mult"]


def cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown"


def machine():
    flags = cpu_flags()
    return {"cpu": cpu_model(), "cores": os.cpu_count(), "avx2": "avx2" in flags,
            "avx512": sorted(f for f in flags if f.startswith("avx512")), "amx": sorted(f for f in flags if f.startswith("amx"))}


def sync(device):
    """Waits for the device's queued work (CUDA), so that a step's time is its own."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def device_info(device):
    if device.type != "cuda":
        return {}
    p = torch.cuda.get_device_properties(device)
    return {"gpu": p.name, "gpu_memory_gb": round(p.total_memory / 2 ** 30, 1), "cuda": torch.version.cuda,
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32}


def device_memory(device):
    """Peak device memory of the run (CUDA), MB."""
    return {"peak_gpu_mb": round(torch.cuda.max_memory_allocated(device) / 2 ** 20)} if device.type == "cuda" else {}


def bf16_check(force, device=None):
    """None when autocast bf16 may run here, else why not."""
    if (device is not None and device.type == "cuda") or "avx512_bf16" in cpu_flags() or force:
        return None
    return "this CPU has no AVX-512 BF16 (avx512_bf16 missing from /proc/cpuinfo): PyTorch's CPU autocast bf16 would run emulated, so no figure is given (--force-bf16 runs it anyway)"


def peak_rss_mb():
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)


def timed_steps(step, warmup, iters, device=torch.device("cpu")):
    for _ in range(warmup):
        step()
    sync(device)
    times, cpu = [], []
    for _ in range(iters):
        c0 = time.process_time()
        t0 = time.perf_counter()
        step()
        sync(device)
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return times, cpu


MATMUL_OPS = ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::conv2d")


def profiled_flops(step):
    """Matrix-product FLOPs of one call of step (forward and backward), as torch.profiler counts them."""
    from torch.profiler import profile, ProfilerActivity
    with profile(activities=[ProfilerActivity.CPU], with_flops=True) as prof:
        step()
    return sum(e.flops for e in prof.key_averages() if e.key in MATMUL_OPS and e.flops)


def serve(step, info, device=torch.device("cpu")):
    """`--serve`: the TypeScript bench drives the steps, so that they alternate with vitreg's. Prints a ready
    line with `info`, then answers each stdin line: `step` (one step: its wall and CPU seconds), `flops`
    (one profiled step's matrix-product FLOPs), `end` (the peak RSS, then exit)."""
    import sys
    print(json.dumps({"ready": True, **info}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "step":
            sync(device)
            c0 = time.process_time()
            t0 = time.perf_counter()
            step()
            sync(device)
            print(json.dumps({"seconds": time.perf_counter() - t0, "cpu_seconds": time.process_time() - c0}), flush=True)
        elif cmd == "flops":
            print(json.dumps({"matmul_gflops": profiled_flops(step) / 1e9}), flush=True)
        elif cmd == "end":
            break
    print(json.dumps({"peak_rss_mb": peak_rss_mb(), **device_memory(device)}), flush=True)


def timing_fields(times, cpu, images):
    mean = sum(times) / len(times)
    return {
        "images_per_s": round(images / mean, 3), "best_images_per_s": round(images / min(times), 3),
        "cpu_images_per_s": round(images / (sum(cpu) / len(cpu)), 3),
        "seconds_per_step": round(mean, 3), "step_seconds_all": [round(t, 3) for t in times],
    }


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--case", choices=["forward", "train-step", "export-onnx"], default="forward")
    p.add_argument("--batch", type=int, default=8)
    p.add_argument("--size", type=int, default=224)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--label-smoothing", type=float, default=0.1)
    p.add_argument("--bce", action="store_true", help="BCE on the targets (DeiT-III) instead of cross-entropy")
    p.add_argument("--clip-grad", type=float, default=3.0, help="global gradient-norm clipping; 0: none")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--weight-decay", type=float, default=0.05)
    p.add_argument("--layer-decay", type=float, default=0.9)
    p.add_argument("--patch-lr-mult", type=float, default=0.2)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--force-bf16", action="store_true")
    p.add_argument("--count-flops", action="store_true")
    p.add_argument("--serve", action="store_true", help="steps on request from stdin (see serve)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    p.add_argument("--out", help="export-onnx: the .onnx file to write")
    model_args(p)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    model = build_model(a, a.classes if a.case == "train-step" else 1000).to(device)
    x = torch.randn(a.batch, 3, a.size, a.size, device=device)
    if a.case == "export-onnx":
        model.eval()
        torch.onnx.export(model, x, a.out, opset_version=17, input_names=["images"], output_names=["tokens"],
                          dynamic_axes={"images": {0: "batch"}, "tokens": {0: "batch"}}, do_constant_folding=True)
        print(json.dumps({"case": "torch-export-onnx", "engine": f"pytorch {torch.__version__}", "out": a.out,
                          "dim": a.dim, "depth": a.depth, "heads": a.heads, "size": a.size, "patch": a.patch}))
        return
    base = {"case": f"torch-{a.case}", "engine": f"pytorch {torch.__version__} {device.type}", "threads": a.threads,
            "batch": a.batch, "size": a.size, "patch": a.patch, "dim": a.dim, "depth": a.depth,
            "registers": a.registers, "precision": a.precision, "device": str(device), **device_info(device)}
    if a.precision == "bf16":
        why = bf16_check(a.force_bf16, device)
        if why:
            print(json.dumps({**base, "skipped": why, "machine": machine()}))
            return
    if a.case == "forward":
        model.eval()

        def step():
            with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
                model(x)
    else:
        model.train()
        groups = param_groups(model.named_parameters(), a.depth, a.layer_decay, a.patch_lr_mult)
        opt = torch.optim.AdamW(groups, lr=a.lr, weight_decay=a.weight_decay)
        set_lr_wd(opt, a.lr, a.weight_decay)
        params = [q for q in model.parameters() if q.requires_grad]
        y = torch.randint(0, a.classes, (a.batch,), device=device)
        targets = F.one_hot(y, a.classes).float()
        smoothed = targets * (1 - a.label_smoothing) + a.label_smoothing / a.classes

        def step():
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=a.precision == "bf16"):
                logits = model.head(model.features(x)[:, 0]).float()
            if a.bce:
                loss = F.binary_cross_entropy_with_logits(logits, (targets > 0).float())
            else:
                loss = -(smoothed * logits.log_softmax(-1)).sum(-1).mean()
            loss.backward()
            if a.clip_grad > 0:
                torch.nn.utils.clip_grad_norm_(params, a.clip_grad)
            opt.step()
            return loss
    if a.serve:
        return serve(step, {**base, "params": sum(q.numel() for q in model.parameters()), "machine": machine()}, device)
    times, cpu = timed_steps(step, a.warmup, a.iters, device)
    out = {**base, **timing_fields(times, cpu, a.batch), "seconds_per_batch": round(sum(times) / len(times), 3),
           "peak_rss_mb": peak_rss_mb(), **device_memory(device), "params": sum(q.numel() for q in model.parameters()),
           "machine": machine()}
    if a.case == "train-step":
        out.update({"drop_path": a.drop_path, "ffn": a.ffn, "clip_grad": a.clip_grad,
                    "loss": "bce" if a.bce else "ce", "classes": a.classes})
    if a.count_flops:
        out["matmul_gflops_per_step"] = round(profiled_flops(step) / 1e9, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
