/**
 * Matrix-product FLOPs of a training step, counted from the shapes (2 per multiply-add; a backward pass
 * counted as twice its forward), to check that the PyTorch reference does the same work as vitreg's step
 * (the reference's own count comes from torch.profiler). Element-wise work (norms, softmax, GELU, the
 * optimiser) is left out: it is a few percent of a ViT step. A `_` file: not a bench case.
 */
import { ffnHiddenDim, type ViTConfig } from '@vitreg/registers';

/** One forward pass of `images` square images of side `size`: patch embedding and every block. */
export function vitForwardFlops(vit: ViTConfig, images: number, size: number): number {
  const D = vit.embed_dim;
  const P = (size / vit.patch_size) ** 2;
  const N = 1 + vit.num_register_tokens + P;
  const h = ffnHiddenDim(vit);
  const ffn = vit.ffn_layer === 'swiglu' ? 6 * N * D * h : 4 * N * D * h;
  const block = 2 * N * D * 3 * D + 4 * N * N * D + 2 * N * D * D + ffn;
  const patch = 2 * P * vit.patch_size * vit.patch_size * 3 * D;
  return images * (patch + vit.depth * block);
}

export interface HeadDims {
  inDim: number;
  hiddenDim: number;
  bottleneckDim: number;
  outDim: number;
  nlayers: number;
}

/** A DINO head's forward over `rows` rows: the MLP and the last layer. */
export function dinoHeadFlops(h: HeadDims, rows: number): number {
  const dims = h.nlayers === 1 ? [h.inDim, h.bottleneckDim] : [h.inDim, ...Array(h.nlayers - 1).fill(h.hiddenDim), h.bottleneckDim];
  let macs = h.bottleneckDim * h.outDim;
  for (let i = 0; i + 1 < dims.length; i++) macs += dims[i]! * dims[i + 1]!;
  return 2 * rows * macs;
}

/** A supervised step of `batch` images: forward + backward of the backbone and the classifier. */
export function supervisedStepFlops(vit: ViTConfig, batch: number, size: number, classes: number): number {
  return 3 * (vitForwardFlops(vit, batch, size) + 2 * batch * vit.embed_dim * classes);
}

export interface DinoShape {
  batch: number;
  globalSize: number;
  localSize: number;
  nLocal: number;
  /** Masked patches of the step (iBOT rows). */
  masked: number;
  dino: HeadDims;
  /** The separate iBOT head, or null when iBOT shares the DINO head (or is off). */
  ibot: HeadDims | null;
  ibotOn: boolean;
}

/** A DINOv2 step: the student's forward + backward (globals, locals, heads) and the teacher's forward. */
export function dinoStepFlops(vit: ViTConfig, s: DinoShape): number {
  const B = s.batch;
  const M = s.ibotOn ? s.masked : 0;
  const shared = s.ibotOn && !s.ibot;
  const studentRows = s.nLocal * B + 2 * B + (shared ? M : 0);
  const student =
    vitForwardFlops(vit, 2 * B, s.globalSize) +
    (s.nLocal > 0 ? vitForwardFlops(vit, s.nLocal * B, s.localSize) : 0) +
    dinoHeadFlops(s.dino, studentRows) +
    (s.ibot && M ? dinoHeadFlops(s.ibot, M) : 0);
  const teacher =
    vitForwardFlops(vit, 2 * B, s.globalSize) +
    dinoHeadFlops(s.dino, 2 * B + (shared ? M : 0)) +
    (s.ibot && M ? dinoHeadFlops(s.ibot, M) : 0);
  return 3 * student + teacher;
}
