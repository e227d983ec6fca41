/**
 * The state dict every checkpoint conversion goes through: DINOv2 names in PyTorch layouts, as
 * Float32Arrays. Also the edits several namings share: renames, the mask token, the classifier head, 2-D
 * transposes, and the class slot of pos_embed (with or without CLS's position in it).
 */
import { posLength, type ViTConfig } from './config.js';

/** A state dict as Float32Arrays with shapes (PyTorch layouts). */
export type StateDict = Record<string, { shape: number[]; data: Float32Array }>;
/** One tensor of a state dict. */
export type Entry = StateDict[string];

/** A zero mask token where the naming has none (only DINOv2's training uses it). */
export function withMaskToken(sd: StateDict): StateDict {
  const D = sd.cls_token?.shape[sd.cls_token.shape.length - 1];
  if (!sd.mask_token && D) sd.mask_token = { shape: [1, D], data: new Float32Array(D) };
  return sd;
}

/** Renames by a list of [from, to] name pairs; every other name is kept. */
export function renamed(sd: StateDict, pairs: [RegExp, string][]): StateDict {
  const out: StateDict = {};
  for (const [k, v] of Object.entries(sd)) {
    const hit = pairs.find(([re]) => re.test(k));
    out[hit ? k.replace(hit[0], hit[1]) : k] = v;
  }
  return out;
}

/** A classifier's `head.weight` / `head.bias`, which are not part of the backbone. */
export function withoutClassifier(sd: StateDict): StateDict {
  const out = { ...sd };
  delete out['head.weight'];
  delete out['head.bias'];
  return out;
}

/** A row-major [rows, cols] matrix transposed to [cols, rows] (into `out` when given). */
export function transpose2d(
  data: Float32Array,
  rows: number,
  cols: number,
  out: Float32Array = new Float32Array(data.length),
): Float32Array {
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  return out;
}

// ---------------------------------------------------------------------------------------------------
// The class slot of pos_embed

/**
 * The same model with a class slot in pos_embed: a zero slot when there was none (CLS had no position).
 * Exact: CLS gets cls_token + 0.
 */
export function withClassSlot(sd: StateDict, c: ViTConfig): StateDict {
  const pos = sd.pos_embed;
  if (!pos || pos.shape.length !== 3 || pos.shape[1] !== posLength(c) || c.pos_embed_cls) return sd;
  const D = pos.shape[2];
  const data = new Float32Array((pos.shape[1] + 1) * D);
  data.set(pos.data, D);
  return { ...sd, pos_embed: { shape: [1, pos.shape[1] + 1, D], data } };
}

/** The same model without a class slot: the slot's position folded into cls_token (one float add per value). */
export function withoutClassSlot(sd: StateDict, c: ViTConfig): StateDict {
  const pos = sd.pos_embed;
  const cls = sd.cls_token;
  if (!pos || !cls || pos.shape.length !== 3 || pos.shape[1] !== posLength(c) || !c.pos_embed_cls) return sd;
  const D = pos.shape[2];
  const folded = new Float32Array(D);
  for (let i = 0; i < D; i++) folded[i] = cls.data[i] + pos.data[i];
  return { ...sd, cls_token: { shape: cls.shape, data: folded }, pos_embed: { shape: [1, pos.shape[1] - 1, D], data: pos.data.slice(D) } };
}

/**
 * Brings pos_embed to the config's layout: a file without class slot read into a model with one
 * (pos_embed_cls, e.g. timm's DINOv2 register models) gets a zero slot; a file with one read into a model
 * without (DeiT-III) has the slot folded into cls_token. Both give the same outputs. Other mismatches are
 * left for checkStateDict to report.
 */
export function fitPosEmbed(sd: StateDict, c: ViTConfig): StateDict {
  const pos = sd.pos_embed;
  if (!pos || pos.shape.length !== 3) return sd;
  const want = posLength(c);
  if (c.pos_embed_cls && pos.shape[1] + 1 === want) {
    return withClassSlot(sd, { ...c, pos_embed_cls: false });
  }
  if (!c.pos_embed_cls && pos.shape[1] === want + 1) return withoutClassSlot(sd, { ...c, pos_embed_cls: true });
  return sd;
}
