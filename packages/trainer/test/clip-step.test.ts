/**
 * The CLIP / SigLIP training step (steps/clip.ts) on a tiny ClipModel: on 1 rank its gradients equal plain
 * autodiff of the loss through both towers (the two-pass feature-gradient method is exact); on 2 in-process
 * ranks of half the batch, the mean of the ranks' losses and gradients equals 1 rank's on the whole batch
 * (data-parallel equivalence).
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, Rng } from '@vitreg/core';
import { ClipModel, getConfig, l2Normalize, validateClipConfig } from '@vitreg/registers';
import { clipLoss, clipStep, LocalGradientSync, sigLipLoss } from '../src/index.ts';
import { pairSyncs } from './clip-helpers.ts';

const B = 4;
const S = 32;
const CTX = 10;

function tinyModel(bias: number | null): ClipModel {
  const config = validateClipConfig({
    vision: getConfig('vit_micro_patch8', { proj_dim: 16, pre_norm: true, patch_bias: false, num_register_tokens: 2 }),
    text: { context_length: CTX, vocab_size: 40, width: 32, heads: 2, layers: 1, proj_dim: 16 },
    init_logit_bias: bias,
  });
  return new ClipModel(config, { seed: 3 });
}

function batch() {
  const rng = new Rng(5);
  const images = Float32Array.from({ length: B * S * S * 3 }, () => rng.normal(0, 1));
  const ids = new Int32Array(B * CTX);
  for (let b = 0; b < B; b++) {
    const n = 2 + b;
    ids[b * CTX] = 38;
    for (let j = 1; j <= n; j++) ids[b * CTX + j] = 1 + rng.int(36);
    ids[b * CTX + n + 1] = 39;
  }
  return { images, ids };
}

function close(a: ArrayLike<number>, b: ArrayLike<number>, what: string, tol = 2e-4): void {
  let scale = 0;
  for (let i = 0; i < b.length; i++) scale = Math.max(scale, Math.abs(b[i]!));
  for (let i = 0; i < a.length; i++)
    assert.ok(Math.abs(a[i]! - b[i]!) <= tol * Math.max(scale, 1e-3), `${what}[${i}]: ${a[i]} vs ${b[i]} (scale ${scale})`);
}

describe('CLIP training step', () => {
  before(async () => {
    await initBackend('wasm', { log: () => {} });
  });

  for (const kind of ['clip', 'siglip'] as const) {
    test(`${kind}: 1 rank equals plain autodiff; 2 ranks average to 1 rank`, async () => {
      const model = tinyModel(kind === 'siglip' ? -10 : null);
      const { images, ids } = batch();
      const one = await clipStep(model, { images, ids, size: B, imageSize: S }, kind, new LocalGradientSync());
      // Plain autodiff of the whole loss through both towers.
      const vars = model.variables();
      const x = tf.tensor4d(images, [B, S, S, 3]);
      const { value, grads } = tf.variableGrads(() => {
        const img = l2Normalize(model.encodeImage(x, { training: true }));
        const txt = l2Normalize(model.encodeText(ids, B));
        const scale = tf.exp(model.logitScale) as tf.Scalar;
        return kind === 'clip' ? clipLoss(img, txt, img, txt, scale, 0) : sigLipLoss(img, txt, scale, model.logitBias as tf.Scalar, 0);
      }, vars);
      close([one.loss], [value.dataSync()[0]!], 'loss');
      vars.forEach((v, i) => {
        const g = grads[v.name];
        close(one.gradients[i]!, g ? g.dataSync() : new Float32Array(v.size), v.name);
      });
      tf.dispose([x, value, ...Object.values(grads)]);
      // Two ranks of half the batch.
      const half = B / 2;
      const ranks = await Promise.all(
        pairSyncs(2).map((sync, r) =>
          clipStep(
            model,
            {
              images: images.slice(r * half * S * S * 3, (r + 1) * half * S * S * 3),
              ids: ids.slice(r * half * CTX, (r + 1) * half * CTX),
              size: half,
              imageSize: S,
            },
            kind,
            sync,
          ),
        ),
      );
      close([(ranks[0]!.loss + ranks[1]!.loss) / 2], [one.loss], 'mean loss');
      one.gradients.forEach((g, i) => {
        const mean = ranks[0]!.gradients[i]!.map((v, j) => (v + ranks[1]!.gradients[i]![j]!) / 2);
        close(mean, g, `mean gradient of ${vars[i]!.name}`);
      });
      model.dispose();
    });
  }
});
