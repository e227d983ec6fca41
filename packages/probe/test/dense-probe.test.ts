/**
 * Dense probes where the answer is known: features that encode each patch's class / depth, random
 * features (chance, computed independently), and the end-to-end run on a model with its resumable
 * feature cache.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { ensureGradients, initBackend, Rng, SyntheticDataset, SyntheticDenseDataset } from '@vitreg/core';
import { getConfig, VisionTransformer } from '@vitreg/registers';
import {
  denseBlocks,
  evaluateDepth,
  evaluateSegmentation,
  extractDenseFeatures,
  runDenseProbe,
  trainDepthHead,
  trainSegmentationHead,
  type DenseFeatures,
} from '../src/index.js';
import { meanDepthScores } from '../src/dense-metrics.js';
import { naiveDenseReport, naiveFeatures } from './dense-naive.js';

await initBackend('wasm', { log: () => {} });
await ensureGradients();
const tmp = await mkdtemp(join(tmpdir(), 'vitreg-dense-probe-'));
test.after(() => rm(tmp, { recursive: true, force: true }));

/** PyTorch's bilinear resize (align_corners=False) of an [h, w] map, written out naively. */
function torchBilinear(x: ArrayLike<number>, h: number, w: number, H: number, W: number): Float64Array {
  const src = (o: number, n: number, N: number) => {
    const s = Math.max(0, ((o + 0.5) * n) / N - 0.5);
    const i0 = Math.min(Math.floor(s), n - 1);
    return [i0, Math.min(i0 + 1, n - 1), s - i0] as const;
  };
  const out = new Float64Array(H * W);
  for (let i = 0; i < H; i++) {
    const [y0, y1, ly] = src(i, h, H);
    for (let j = 0; j < W; j++) {
      const [x0, x1, lx] = src(j, w, W);
      out[i * W + j] =
        (1 - ly) * ((1 - lx) * x[y0 * w + x0] + lx * x[y0 * w + x1]) + ly * ((1 - lx) * x[y1 * w + x0] + lx * x[y1 * w + x1]);
    }
  }
  return out;
}

const G = 4,
  PATCH = 4,
  S = G * PATCH,
  K = 4,
  D = 8;

/**
 * n images of a G x G grid whose classes come in 2 x 2-patch regions; the label of a pixel is the
 * class of its patch. Features: 3 x one-hot(class) + N(0, 0.3) noise, or pure N(0, 1) noise.
 */
function segSet(rng: Rng, n: number, random: boolean) {
  const x = new Float32Array(n * G * G * D);
  const labels = new Uint8Array(n * S * S);
  const classes = new Int32Array(n * G * G);
  for (let i = 0; i < n; i++) {
    const region = Array.from({ length: 4 }, () => rng.int(K));
    for (let r = 0; r < G; r++)
      for (let c = 0; c < G; c++) classes[i * G * G + r * G + c] = region[Math.floor(r / 2) * 2 + Math.floor(c / 2)];
    for (let p = 0; p < G * G; p++) {
      for (let d = 0; d < D; d++)
        x[(i * G * G + p) * D + d] = random ? rng.normal() : (d === classes[i * G * G + p] ? 3 : 0) + 0.3 * rng.normal();
    }
    for (let y = 0; y < S; y++)
      for (let xx = 0; xx < S; xx++)
        labels[i * S * S + y * S + xx] = classes[i * G * G + Math.floor(y / PATCH) * G + Math.floor(xx / PATCH)];
  }
  return { f: { n, grid: [G, G], dim: D, x } as DenseFeatures, labels, classes };
}

test('segmentation: features encoding each patch class give mIoU >= 0.95 (a perfect head tops out near 0.99 here)', async () => {
  const rng = new Rng(11);
  const tr = segSet(rng, 32, false),
    te = segSet(rng, 48, false);
  const head = trainSegmentationHead(tr.f, tr.labels, [S, S], { numClasses: K, steps: 200, lr: 1e-2 });
  const label = async (i: number) => ({ width: S, height: S, segmentation: te.labels.subarray(i * S * S, (i + 1) * S * S) });
  const { scores } = await evaluateSegmentation(head, te.f, [S, S], label);
  // the ceiling: per-patch one-hot logits upsampled bilinearly (the naive resize above), argmax, per-class IoU
  const inter = new Float64Array(K),
    union = new Float64Array(K);
  for (let i = 0; i < te.f.n; i++) {
    const ups = Array.from({ length: K }, (_, c) =>
      torchBilinear(
        Array.from(te.classes.subarray(i * G * G, (i + 1) * G * G), (v) => (v === c ? 1 : 0)),
        G,
        G,
        S,
        S,
      ),
    );
    for (let q = 0; q < S * S; q++) {
      let best = 0;
      for (let c = 1; c < K; c++) if (ups[c][q] > ups[best][q]) best = c;
      const l = te.labels[i * S * S + q];
      if (best === l) inter[l]++;
      union[l]++;
      if (best !== l) union[best]++;
    }
  }
  const ceiling = Array.from(inter, (v, c) => v / union[c]).reduce((a, b) => a + b, 0) / K;
  assert.ok(ceiling > 0.97 && ceiling < 1, `ceiling ${ceiling}`);
  assert.ok(scores.miou >= 0.95, `mIoU ${scores.miou} (ceiling ${ceiling})`);
  assert.ok(scores.accuracy >= 0.97, `pixel accuracy ${scores.accuracy}`);
});

test('segmentation: random features give chance, the mIoU of a prediction independent of the labels', async () => {
  const rng = new Rng(12);
  const tr = segSet(rng, 32, true),
    te = segSet(rng, 96, true);
  const head = trainSegmentationHead(tr.f, tr.labels, [S, S], { numClasses: K, steps: 200, lr: 1e-2 });
  const { scores, totals } = await evaluateSegmentation(head, te.f, [S, S], async (i) => ({
    width: S,
    height: S,
    segmentation: te.labels.subarray(i * S * S, (i + 1) * S * S),
  }));
  // independent of the labels: expected intersection p_c q_c N, so IoU_c = p q / (p + q - p q)
  const N = te.labels.length;
  let expected = 0,
    expectedAcc = 0;
  for (let c = 0; c < K; c++) {
    const p = totals.labelled[c] / N,
      q = totals.predicted[c] / N;
    expected += (p * q) / (p + q - p * q) / K;
    expectedAcc += p * q;
  }
  assert.ok(Math.abs(scores.miou - expected) < 0.03, `mIoU ${scores.miou}, chance ${expected}`);
  assert.ok(Math.abs(scores.accuracy - expectedAcc) < 0.04, `accuracy ${scores.accuracy}, chance ${expectedAcc}`);
  assert.ok(scores.miou < 1 / (2 * K - 1) + 0.03, `mIoU ${scores.miou} above the best chance level 1/(2K-1)`);
});

/**
 * n images of per-patch depths in [1, 9] m; the depth map is their bilinear upsampling to 4x the grid
 * and then to L x L (what a perfect head's output goes through). Features: [d, -d/2 + noise, noise...]
 * (depth encoded linearly), or pure noise.
 */
function depthSet(rng: Rng, n: number, L: number, random: boolean) {
  const Dd = 6;
  const x = new Float32Array(n * G * G * Dd);
  const depths = new Float32Array(n * L * L);
  for (let i = 0; i < n; i++) {
    const d = Array.from({ length: G * G }, () => 1 + 8 * rng.float());
    for (let p = 0; p < G * G; p++) {
      for (let k = 0; k < Dd; k++)
        x[(i * G * G + p) * Dd + k] = random ? rng.normal() : k === 0 ? d[p] : k === 1 ? -0.5 * d[p] + rng.normal() : rng.normal();
    }
    depths.set(torchBilinear(torchBilinear(d, G, G, 4 * G, 4 * G), 4 * G, 4 * G, L, L), i * L * L);
  }
  return { f: { n, grid: [G, G], dim: Dd, x } as DenseFeatures, depths };
}

const L = 24;
const depthTarget = (depths: Float32Array) => async (i: number) => ({
  width: L,
  height: L,
  depth: depths.subarray(i * L * L, (i + 1) * L * L),
});

test('depth: features encoding depth linearly give RMSE near 0 (regression head < 0.01 m; the 256-bin head < 0.2 m)', async () => {
  const rng = new Rng(13);
  const tr = depthSet(rng, 16, L, false),
    te = depthSet(rng, 8, L, false);
  const reg = trainDepthHead(tr.f, tr.depths, [L, L], { mode: 'regression', steps: 200, lr: 5e-2 });
  const r = meanDepthScores(await evaluateDepth(reg, te.f, [1e-3, 10], depthTarget(te.depths)));
  assert.ok(r.rmse < 0.01, `regression RMSE ${r.rmse}`);
  assert.equal(r.delta1, 1);
  assert.ok(r.absRel < 0.002, `abs rel ${r.absRel}`);
  const bins = trainDepthHead(tr.f, tr.depths, [L, L], { steps: 200, lr: 5e-2 });
  const b = meanDepthScores(await evaluateDepth(bins, te.f, [1e-3, 10], depthTarget(te.depths)));
  assert.equal(bins.nBins, 256);
  assert.ok(b.rmse < 0.2, `bins RMSE ${b.rmse}`);
  assert.ok(b.delta1 > 0.97, `bins delta1 ${b.delta1}`);
});

test('depth: random features give chance, the RMSE of the constant SigLoss prefers (training geometric mean)', async () => {
  const rng = new Rng(14);
  const tr = depthSet(rng, 16, L, true),
    te = depthSet(rng, 16, L, true);
  const head = trainDepthHead(tr.f, tr.depths, [L, L], { steps: 150, lr: 5e-2 });
  const r = meanDepthScores(await evaluateDepth(head, te.f, [1e-3, 10], depthTarget(te.depths)));
  const geo = Math.exp(tr.depths.reduce((s, v) => s + Math.log(v), 0) / tr.depths.length);
  let chance = 0;
  for (let i = 0; i < te.f.n; i++) {
    let se = 0;
    for (let q = 0; q < L * L; q++) se += (te.depths[i * L * L + q] - geo) ** 2;
    chance += Math.sqrt(se / (L * L)) / te.f.n;
  }
  assert.ok(Math.abs(r.rmse / chance - 1) < 0.1, `RMSE ${r.rmse}, chance ${chance}`);
});

test('blocks read: the last one, the last 4 (segmentation), the hub spread (depth)', () => {
  assert.deepEqual(denseBlocks(12, 'segmentation', 1), [11]);
  assert.deepEqual(denseBlocks(12, 'segmentation', 4), [8, 9, 10, 11]);
  assert.deepEqual(denseBlocks(12, 'depth', 4), [2, 5, 8, 11]);
  assert.deepEqual(denseBlocks(24, 'depth', 4), [4, 11, 17, 23]);
  assert.deepEqual(denseBlocks(40, 'depth', 4), [9, 19, 29, 39]);
  assert.deepEqual(denseBlocks(8, 'depth', 4), [1, 3, 5, 7]);
  assert.throws(() => denseBlocks(2, 'depth', 4), /at least 4 blocks/);
});

const model = new VisionTransformer(getConfig('vit_micro_patch8_reg4', { depth: 4 }), { seed: 1 });

test('features: normalised tokens for segmentation, raw tokens and CLS for depth, blocks side by side', async () => {
  const item = await new SyntheticDataset({ seed: 2, count: 2, size: 32 }).get(0);
  const images = tf.tensor4d(
    Float32Array.from(item.image, (v) => v / 255 - 0.5),
    [1, 32, 32, 3],
  );
  const out = model.forward(images, { layers: true });
  const R = 4,
    Dm = 64;
  const layers = out.layers!.map((l) => l.arraySync()[0]);
  const seg1 = extractDenseFeatures(model, images, 'segmentation', [3]);
  assert.deepEqual(Array.from(seg1.x), Array.from(out.patches.dataSync()));
  assert.equal(seg1.cls, undefined);
  // 4 blocks: each block's tokens through the final LayerNorm (computed here by hand), concatenated
  const seg4 = extractDenseFeatures(model, images, 'segmentation', [0, 1, 2, 3]);
  const w = model.param('norm.weight').dataSync(),
    b = model.param('norm.bias').dataSync();
  for (const [k, blk] of [0, 1, 2, 3].entries()) {
    for (const p of [0, 7, 15]) {
      const t = layers[blk][1 + R + p];
      const mean = t.reduce((s, v) => s + v, 0) / Dm;
      const std = Math.sqrt(t.reduce((s, v) => s + (v - mean) ** 2, 0) / Dm + model.config.norm_eps);
      for (const d of [0, 31, 63]) {
        const want = ((t[d] - mean) / std) * w[d] + b[d];
        assert.ok(Math.abs(seg4.x[p * 4 * Dm + k * Dm + d] - want) < 1e-4, `block ${blk} patch ${p} channel ${d}`);
      }
    }
  }
  const dep = extractDenseFeatures(model, images, 'depth', [1, 3]);
  for (const [k, blk] of [1, 3].entries()) {
    for (const d of [0, 40]) {
      assert.ok(Math.abs(dep.cls![k * Dm + d] - layers[blk][0][d]) < 1e-6, 'raw CLS');
      assert.ok(Math.abs(dep.x[5 * 2 * Dm + k * Dm + d] - layers[blk][1 + R + 5][d]) < 1e-6, 'raw patch');
    }
  }
  tf.dispose([
    images,
    ...Object.values(out)
      .flat()
      .filter((v): v is tf.Tensor => v instanceof tf.Tensor),
  ]);
});

test('runDenseProbe on the synthetic dense set: report, baseline, resumable feature cache, errors', async () => {
  const train = { dataset: new SyntheticDenseDataset({ seed: 3, count: 10, size: 32 }) };
  const test = { dataset: new SyntheticDenseDataset({ seed: 3, count: 4, size: 40, split: 'val' }) };
  const opts = { task: 'segmentation' as const, size: 32, steps: 20, batchSize: 4 };
  const fresh = await runDenseProbe(model, train, test, opts);
  const r = fresh.report;
  assert.deepEqual([r.train, r.test, r.grid, r.blocks, r.featureDim, r.trainLabelSize, r.resumed], [10, 4, [4, 4], [3], 64, 32, 0]);
  assert.equal(r.segmentation!.classNames.length, 6);
  // The scores recomputed naively (dense-naive.ts) from the head's tensors and the test images' features.
  const want = await naiveDenseReport(
    'segmentation',
    fresh.tensors,
    await naiveFeatures(model, test.dataset, 32, 'segmentation'),
    [4, 4],
    32,
    train.dataset,
    test.dataset,
  );
  for (const [k, got, w] of [
    ['mIoU', r.segmentation!.miou, want.miou!],
    ['pixel accuracy', r.segmentation!.accuracy, want.accuracy!],
    ['baseline mIoU', r.baseline.miou!, want.baseline.miou!],
    ['baseline accuracy', r.baseline.accuracy!, want.baseline.accuracy!],
  ] as const)
    assert.ok(Math.abs(got - w) < 1e-6, `${k}: ${got}, naive ${w}`);
  assert.ok(r.baseline.accuracy! > 0.3, 'the background is the majority class');
  assert.deepEqual(Object.keys(fresh.tensors), [
    'bn.weight',
    'bn.bias',
    'bn.running_mean',
    'bn.running_var',
    'conv_seg.weight',
    'conv_seg.bias',
  ]);
  assert.deepEqual(fresh.tensors['conv_seg.weight'].shape, [6, 64, 1, 1]);

  // interrupted after 4 training images: the rerun takes them from the cache, computes the rest, same result
  const cacheDir = join(tmp, 'cache');
  await runDenseProbe(model, train, test, { ...opts, cacheDir });
  const meta = JSON.parse(await readFile(join(cacheDir, 'train.json'), 'utf8'));
  assert.equal(meta.count, 10);
  await writeFile(join(cacheDir, 'train.json'), JSON.stringify({ ...meta, count: 4 }));
  await rm(join(cacheDir, 'test.json'));
  const resumed = await runDenseProbe(model, train, test, { ...opts, cacheDir });
  assert.equal(resumed.report.resumed, 4);
  assert.deepEqual(resumed.report.segmentation, r.segmentation);
  await assert.rejects(
    runDenseProbe(model, train, test, { ...opts, cacheDir, trainLabelSize: 16 }),
    /feature cache .*train\.json was made with other settings/,
  );

  const depth = await runDenseProbe(model, train, test, { task: 'depth', size: 32, steps: 10 });
  assert.equal(depth.report.featureDim, 128, 'patch and CLS channels');
  assert.equal(depth.report.depth!.images, 4);
  const wantDepth = await naiveDenseReport(
    'depth',
    depth.tensors,
    await naiveFeatures(model, test.dataset, 32, 'depth'),
    [4, 4],
    32,
    train.dataset,
    test.dataset,
  );
  for (const [k, got, w] of [
    ['RMSE', depth.report.depth!.rmse, wantDepth.rmse!],
    ['abs rel', depth.report.depth!.absRel, wantDepth.absRel!],
    ['delta1', depth.report.depth!.delta1, wantDepth.delta1!],
    ['baseline RMSE', depth.report.baseline.rmse!, wantDepth.baseline.rmse!],
  ] as const)
    assert.ok(Math.abs(got - w) < 1e-4 * Math.max(1, w), `depth ${k}: ${got}, naive ${w}`);
  assert.deepEqual(depth.tensors['conv_depth.weight'].shape, [256, 128, 1, 1]);

  const classOnly = {
    dataset: Object.assign(new SyntheticDenseDataset({ seed: 3, count: 2, size: 32 }), { tasks: ['segmentation'] as const }),
  };
  await assert.rejects(runDenseProbe(model, classOnly, test, { task: 'depth', size: 32 }), /the training dataset has no depth targets/);
  await assert.rejects(
    runDenseProbe(model, train, test, { task: 'segmentation', size: 30 }),
    /size 30 must be a positive multiple of the patch size 8/,
  );
});
