"""PyTorch reference of one DINOv2 training step (`npm run bench -- train-step --objective dinov2`): a compact
re-implementation of facebookresearch/dinov2's SSLMetaArch.forward_backward and the optimiser part of
its train loop, with the same shapes, heads, losses and optimiser as vitreg's DINO step, timed on the
CPU. A speed reference (the same work), not a parity fixture: the weights and crops are random.

One step (as dinov2/train/ssl_meta_arch.py and train.py, single process):
- teacher (no grad, eval mode, no drop path): the 2B global crops; CLS tokens swapped (crop 2, crop 1);
  the masked patch tokens gathered (index_select); DINO head over [CLS, masked patches] when the iBOT
  head is shared, else the DINO head on CLS and the iBOT head on the patches; targets by
  softmax((t - center) / temp) with the centres' EMA update, or by Sinkhorn-Knopp (3 iterations);
- student: the global crops with the iBOT mask token where masked, the local crops (positional
  embedding resampled), the DINO head over [local CLS, global CLS (, masked patches)] in one pass;
  DINO loss over local and global pairs (each / number of pairs), KoLeo (x weight) on each global
  crop's CLS, iBOT loss on the masked patches weighted 1 / masked patches of their crop;
- backward, gradient clipping per module (backbone, dino_head, ibot_head), AdamW with DINOv2's
  parameter groups (no decay on biases / norms / gammas; the last layer's lr), the EMA teacher
  (torch._foreach_mul_ / _foreach_add_).
Masks follow collate_data_and_cast (int(2B x 0.5) crops masked, ratios spread over [0.1, 0.5]; random
patches rather than blocks: the same counts). The official code runs the global and local crops as one
xFormers nested batch (CUDA only); here they are two forwards, as vitreg runs them.

Drop path: above a rate of 0.1 DINOv2's Block runs each residual branch on a random subset of the batch
(`--drop-path-compute subset`, the official compute saving); `full` (default) computes the branch on every
image and zeroes the dropped ones, which is what vitreg's graphs do: the same FLOPs as vitreg.

Prints one JSON line: images/s (images = B, each 2 global + n local crops), seconds per step, peak RSS,
and with `--count-flops` the matrix-product FLOPs of one step from torch.profiler.
"""
import argparse
import json
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from torch_vit import (bf16_check, build_model, device_info, device_memory, machine, model_args, param_groups,
                       peak_rss_mb, profiled_flops, serve, set_lr_wd, timed_steps, timing_fields)


class DINOHead(nn.Module):
    """dinov2/layers/dino_head.py: MLP (GELU), L2 normalisation, weight_norm(Linear(bottleneck, K, bias=False))."""

    def __init__(self, in_dim, out_dim, hidden, bottleneck, nlayers=3):
        super().__init__()
        dims = [in_dim] + [hidden] * (nlayers - 1) + [bottleneck] if nlayers > 1 else [in_dim, bottleneck]
        layers = []
        for i in range(len(dims) - 1):
            layers.append(nn.Linear(dims[i], dims[i + 1]))
            if i < len(dims) - 2:
                layers.append(nn.GELU())
        self.mlp = nn.Sequential(*layers)
        self.last_layer = nn.utils.weight_norm(nn.Linear(bottleneck, out_dim, bias=False))
        self.last_layer.weight_g.data.fill_(1)

    def forward(self, x):
        x = self.mlp(x)
        eps = 1e-6 if x.dtype == torch.float16 else 1e-12
        x = F.normalize(x, dim=-1, p=2, eps=eps)
        return self.last_layer(x)


def dino_loss(student_list, teacher_list, temp):
    """DINOLoss.forward: -sum over pairs of mean(sum(t * log_softmax(s / temp)))."""
    total = 0
    for s in student_list:
        lsm = F.log_softmax(s / temp, dim=-1)
        for t in teacher_list:
            total = total - torch.sum(t * lsm, dim=-1).mean()
    return total


def koleo_loss(x, eps=1e-8):
    """KoLeoLoss: -mean(log(||x_i - x_nn(i)|| + eps)) on L2-normalised rows."""
    with torch.autocast(x.device.type, enabled=False):
        x = F.normalize(x.float(), eps=eps, p=2, dim=-1)
        dots = torch.mm(x, x.t())
        n = x.shape[0]
        dots.view(-1)[:: (n + 1)].fill_(-1)
        idx = torch.max(dots, dim=1).indices
        dist = nn.PairwiseDistance(2, eps=eps)(x, x[idx])
        return -torch.log(dist + eps).mean()


def ibot_masked_loss(student, teacher, weights, n_images, temp):
    """iBOTPatchLoss.forward_masked: -sum(w * sum(t * log_softmax(s / temp))) / images."""
    loss = torch.sum(teacher * F.log_softmax(student / temp, dim=-1), dim=-1)
    return -(loss * weights).sum() / n_images


@torch.no_grad()
def sinkhorn_knopp(logits, temp, iters=3):
    """SinkhornKnoppTeacher (one process: the all-reduces are identities)."""
    q = torch.exp(logits.float() / temp).t()
    b, k = q.shape[1], q.shape[0]
    q /= torch.sum(q)
    for _ in range(iters):
        q /= torch.sum(q, dim=1, keepdim=True)
        q /= k
        q /= torch.sum(q, dim=0, keepdim=True)
        q /= b
    q *= b
    return q.t()


def collate_masks(n_crops, n_patches, ratio=(0.1, 0.5), prob=0.5, gen=None):
    """collate_data_and_cast's masks: int(n x prob) crops masked, mask ratios in consecutive slices of ratio."""
    n_masked = int(n_crops * prob)
    probs = torch.linspace(ratio[0], ratio[1], n_masked + 1)
    masks = torch.zeros(n_crops, n_patches, dtype=torch.bool)
    for i in range(n_masked):
        lo, hi = probs[i].item(), probs[i + 1].item()
        count = int(n_patches * (lo + (hi - lo) * torch.rand(1, generator=gen).item()))
        masks[i, torch.randperm(n_patches, generator=gen)[:count]] = True
    masks = masks[torch.randperm(n_crops, generator=gen)]
    weights = (1 / masks.sum(-1).clamp(min=1.0)).unsqueeze(-1).expand_as(masks)[masks]
    return masks, masks.flatten().nonzero().flatten(), weights


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--batch", type=int, default=32, help="images B: 2B global crops, n x B local crops")
    p.add_argument("--size", type=int, default=224, help="global crop size")
    p.add_argument("--local-size", type=int, default=96)
    p.add_argument("--local-crops", type=int, default=8)
    p.add_argument("--iters", type=int, default=2)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--prototypes", type=int, default=65536)
    p.add_argument("--head-hidden", type=int, default=2048)
    p.add_argument("--head-bottleneck", type=int, default=256)
    p.add_argument("--head-layers", type=int, default=3)
    p.add_argument("--ibot", choices=["shared", "separate", "none"], default="shared")
    p.add_argument("--ibot-prototypes", type=int, default=65536)
    p.add_argument("--ibot-hidden", type=int, default=2048)
    p.add_argument("--ibot-bottleneck", type=int, default=256)
    p.add_argument("--centering", choices=["centering", "sinkhorn_knopp"], default="centering")
    p.add_argument("--koleo", type=float, default=0.1)
    p.add_argument("--student-temp", type=float, default=0.1)
    p.add_argument("--teacher-temp", type=float, default=0.04)
    p.add_argument("--mask-probability", type=float, default=0.5)
    p.add_argument("--mask-ratio", type=float, nargs=2, default=[0.1, 0.5])
    p.add_argument("--clip-grad", type=float, default=3.0)
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--weight-decay", type=float, default=0.04)
    p.add_argument("--layer-decay", type=float, default=0.9)
    p.add_argument("--patch-lr-mult", type=float, default=0.2)
    p.add_argument("--momentum", type=float, default=0.992)
    p.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    p.add_argument("--force-bf16", action="store_true")
    p.add_argument("--count-flops", action="store_true")
    p.add_argument("--serve", action="store_true", help="steps on request from stdin (torch_vit.serve)")
    p.add_argument("--device", default="cpu", help="cpu or cuda[:N]")
    model_args(p)
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    device = torch.device(a.device)
    B, G, L, nL = a.batch, a.size, a.local_size, a.local_crops
    base = {"case": "torch-train-step-dinov2", "engine": f"pytorch {torch.__version__} {device.type}", "threads": a.threads,
            "batch": B, "global_crops": 2, "global_size": G, "local_crops": nL, "local_size": L, "patch": a.patch,
            "dim": a.dim, "depth": a.depth, "ffn": a.ffn, "registers": a.registers, "precision": a.precision,
            "prototypes": a.prototypes, "ibot": a.ibot, "centering": a.centering, "drop_path": a.drop_path,
            "drop_path_compute": a.drop_path_compute, "device": str(device), **device_info(device)}
    if a.precision == "bf16":
        why = bf16_check(a.force_bf16, device)
        if why:
            print(json.dumps({**base, "skipped": why, "machine": machine()}))
            return
    with_ibot = a.ibot != "none"
    student = nn.ModuleDict({"backbone": build_model(a, 0, mask_token=with_ibot)})
    teacher = nn.ModuleDict({"backbone": build_model(a, 0, mask_token=with_ibot)})
    for blk in teacher["backbone"].blocks:
        blk.drop = 0.0
    student["dino_head"] = DINOHead(a.dim, a.prototypes, a.head_hidden, a.head_bottleneck, a.head_layers)
    teacher["dino_head"] = DINOHead(a.dim, a.prototypes, a.head_hidden, a.head_bottleneck, a.head_layers)
    if a.ibot == "separate":
        student["ibot_head"] = DINOHead(a.dim, a.ibot_prototypes, a.ibot_hidden, a.ibot_bottleneck, a.head_layers)
        teacher["ibot_head"] = DINOHead(a.dim, a.ibot_prototypes, a.ibot_hidden, a.ibot_bottleneck, a.head_layers)
    student.to(device)
    teacher.to(device)
    teacher.load_state_dict(student.state_dict())
    for q in teacher.parameters():
        q.requires_grad = False
    student.train()
    teacher.eval()
    groups = []
    for k, module in student.items():
        for g in param_groups(module.named_parameters(), a.depth, a.layer_decay, a.patch_lr_mult, prefix=k):
            groups.append(g)
    opt = torch.optim.AdamW(groups, lr=a.lr, weight_decay=a.weight_decay)
    set_lr_wd(opt, a.lr, a.weight_decay)
    student_params = [q for q in student.parameters()]
    teacher_params = [q for q in teacher.parameters()]
    k_ibot = a.ibot_prototypes if a.ibot == "separate" else a.prototypes
    centers = {"dino": torch.zeros(1, a.prototypes, device=device), "ibot": torch.zeros(1, k_ibot, device=device)}

    gen = torch.Generator().manual_seed(0)
    globals_ = torch.randn(2 * B, 3, G, G, device=device)
    locals_ = torch.randn(nL * B, 3, L, L, device=device) if nL > 0 else None
    n_patches = (G // a.patch) ** 2
    masks, mask_index, mask_weight = collate_masks(2 * B, n_patches, a.mask_ratio, a.mask_probability, gen)
    masks, mask_index, mask_weight = masks.to(device), mask_index.to(device), mask_weight.to(device)
    M = mask_index.shape[0] if with_ibot else 0
    n_global_terms, n_local_terms = 2, max(nL * 2, 0)
    terms = n_global_terms + n_local_terms
    autocast = {"device_type": device.type, "dtype": torch.bfloat16, "enabled": a.precision == "bf16"}

    def targets(logits, name):
        if a.centering == "sinkhorn_knopp":
            return sinkhorn_knopp(logits, a.teacher_temp)
        out = F.softmax((logits - centers[name]) / a.teacher_temp, dim=-1)
        centers[name] = centers[name] * 0.9 + logits.mean(0, keepdim=True) * 0.1
        return out

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.no_grad(), torch.autocast(**autocast):
            t = teacher["backbone"].features(globals_)
            cls = t[:, 0]
            cls = torch.cat(cls.chunk(2)[::-1])
            patches = t[:, 1 + a.registers:].flatten(0, 1).index_select(0, mask_index) if M else None
            if M and a.ibot == "shared":
                both = teacher["dino_head"](torch.cat([cls, patches]))
                t_dino, t_ibot = both[:2 * B], both[2 * B:]
            else:
                t_dino = teacher["dino_head"](cls)
                t_ibot = teacher["ibot_head"](patches) if M else None
        t_dino = targets(t_dino.float(), "dino")
        t_ibot = targets(t_ibot.float(), "ibot") if M else None
        with torch.autocast(**autocast):
            g = student["backbone"].features(globals_, masks=masks if M else None)
            l = student["backbone"].features(locals_) if nL > 0 else None
            g_cls = g[:, 0]
            head_in = ([l[:, 0]] if l is not None else []) + [g_cls]
            s_patches = g[:, 1 + a.registers:].flatten(0, 1).index_select(0, mask_index) if M else None
            if M and a.ibot == "shared":
                head_in.append(s_patches)
            out = student["dino_head"](torch.cat(head_in)).float()
            n_loc = nL * B
            local_out, global_out = out[:n_loc], out[n_loc:n_loc + 2 * B]
            loss = 0
            if nL > 0:
                loss = loss + dino_loss(local_out.chunk(nL), t_dino.chunk(2), a.student_temp) / terms
            loss = loss + dino_loss([global_out], [t_dino], a.student_temp) * 2 / terms
            if a.koleo > 0:
                loss = loss + a.koleo * sum(koleo_loss(c) for c in g_cls.chunk(2))
            if M:
                s_ibot = out[n_loc + 2 * B:] if a.ibot == "shared" else student["ibot_head"](s_patches).float()
                loss = loss + ibot_masked_loss(s_ibot, t_ibot, mask_weight, 2 * B, a.student_temp) * 2 * 0.5
        loss.backward()
        if a.clip_grad > 0:
            for module in student.values():
                torch.nn.utils.clip_grad_norm_(module.parameters(), a.clip_grad)
        opt.step()
        with torch.no_grad():
            torch._foreach_mul_(teacher_params, a.momentum)
            torch._foreach_add_(teacher_params, student_params, alpha=1 - a.momentum)
        return loss

    if a.serve:
        return serve(step, {**base, "masked_patches": int(M), "student_params": sum(q.numel() for q in student.parameters()),
                            "machine": machine()}, device)
    times, cpu = timed_steps(step, a.warmup, a.iters, device)
    out = {**base, **timing_fields(times, cpu, B), "masked_patches": int(M), "peak_rss_mb": peak_rss_mb(),
           **device_memory(device),
           "student_params": sum(q.numel() for q in student.parameters()), "machine": machine()}
    if a.count_flops:
        out["matmul_gflops_per_step"] = round(profiled_flops(step) / 1e9, 2)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
