import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { readSafetensors, toFloat32, type HostTensor } from '@vitreg/core';
import {
  analyzeTokens,
  analysisToJson,
  attentionToPatches,
  detectOutliers,
  l2Norms,
  neighbourSimilarity,
  otsuThreshold,
  testBimodality,
  tokenDataFromOutput,
  tokenNorms,
  type AnalysisSource,
} from '../src/analysis.js';
import { loadWeights } from '../src/weights.js';

const FIX = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'dinov2-parity');

/** Deterministic normal samples (Box-Muller on a small LCG), independent of the code under test. */
function normals(n: number, seed: number): number[] {
  let s = seed >>> 0;
  const u = () => ((s = (Math.imul(s, 1664525) + 1013904223) >>> 0) + 0.5) / 2 ** 32;
  return Array.from({ length: n }, () => Math.sqrt(-2 * Math.log(u())) * Math.cos(2 * Math.PI * u()));
}

/** Float64 norms of rows, written out independently of l2Norms. */
function refNorms(t: HostTensor): number[] {
  const d = t.shape[t.shape.length - 1];
  const x = toFloat32(t);
  const out: number[] = [];
  for (let i = 0; i < x.length / d; i++) out.push(Math.hypot(...x.subarray(i * d, (i + 1) * d)));
  return out;
}

function close(a: number, b: number, what: string, rtol = 1e-5, atol = 1e-5): void {
  assert.ok(Math.abs(a - b) <= atol + rtol * Math.abs(b), `${what}: ${a} vs ${b}`);
}

test('otsuThreshold splits two clusters between them', () => {
  const v = [1, 1.1, 0.9, 1.05, 5, 5.2, 4.9];
  const t = otsuThreshold(v);
  assert.ok(t > 1.1 && t < 4.9, `threshold ${t}`);
  assert.equal(otsuThreshold([3, 3, 3]), 3);
});

test('auto threshold: bimodal norm sets give exactly the planted outliers', () => {
  // 250 "normal" log-normal norms around 50, 6 outliers around 400 (the paper's picture, ~2%).
  const z = normals(256, 7);
  const norms = z.map((x, i) => (i % 43 === 5 ? 400 * Math.exp(0.1 * x) : 50 * Math.exp(0.2 * x)));
  const planted = norms.map((_, i) => i).filter((i) => i % 43 === 5);
  const r = detectOutliers(norms, [16, 16]);
  assert.equal(r.method, 'auto');
  assert.deepEqual(r.indices, planted);
  assert.deepEqual(r.positions, planted.map((i) => [Math.floor(i / 16), i % 16]));
  assert.equal(r.fraction, planted.length / 256);
  assert.ok(r.threshold !== null && r.threshold > Math.max(...norms.filter((_, i) => !planted.includes(i))));
  assert.ok(r.threshold! < Math.min(...planted.map((i) => norms[i])));
  assert.ok(r.bimodality!.bimodal && r.bimodality!.separation > 2);
  // A single far token among 100 is found too.
  const one = normals(100, 3).map((x) => 40 * Math.exp(0.15 * x));
  one[37] = 600;
  assert.deepEqual(detectOutliers(one, [10, 10]).indices, [37]);
});

test('auto threshold: unimodal norm sets give no outliers', () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    for (const n of [64, 256, 1369]) {
      const gauss = normals(n, seed).map((x) => 50 * Math.exp(0.3 * x));
      const r = detectOutliers(gauss, null);
      assert.equal(r.indices.length, 0, `log-normal n=${n} seed=${seed}: ${r.bimodality!.reason}`);
      assert.equal(r.threshold, null);
      // Uniform norms (flat, wide) are not bimodal either.
      let s = seed;
      const uni = Array.from({ length: n }, () => 20 + 80 * ((s = (Math.imul(s, 69069) + 1) >>> 0) / 2 ** 32));
      assert.equal(detectOutliers(uni, null).indices.length, 0, `uniform n=${n} seed=${seed}`);
    }
  }
  // Degenerate and tiny inputs.
  assert.equal(detectOutliers(new Array(50).fill(10), null).indices.length, 0);
  assert.match(testBimodality([1, 2, 100]).reason, /only 3 values/);
  // A symmetric 50/50 split is not an outlier set (the high side is not a minority).
  const half = normals(200, 9).map((x, i) => (i % 2 ? 10 : 100) * Math.exp(0.05 * x));
  const h = detectOutliers(half, null);
  assert.equal(h.indices.length, 0);
  assert.match(h.bimodality!.reason, /high component/);
});

test('fixed threshold: norms strictly above it', () => {
  const r = detectOutliers([10, 150, 151, 3000], [2, 2], { threshold: 150 });
  assert.equal(r.method, 'fixed');
  assert.deepEqual(r.indices, [2, 3]);
  assert.deepEqual(r.positions, [[1, 0], [1, 1]]);
  assert.equal(r.fraction, 0.5);
  assert.throws(() => detectOutliers([1, 2, 3], [2, 2]), /3 norms do not fill a 2x2 grid/);
  assert.throws(() => detectOutliers([1, NaN], null), /norm 1 is NaN/);
});

test('neighbourSimilarity: cosine to the 4-neighbours on a hand-made grid', () => {
  // 2x3 grid, dim 2: patch i has direction angle a_i.
  const angles = [0, 0, Math.PI / 2, 0, Math.PI, Math.PI / 2];
  const emb = angles.flatMap((a, i) => [(i + 1) * Math.cos(a), (i + 1) * Math.sin(a)]);
  const sim = neighbourSimilarity(emb, [2, 3], 2);
  const cos = (i: number, j: number) => Math.cos(angles[i] - angles[j]);
  close(sim[0], (cos(0, 1) + cos(0, 3)) / 2, 'patch 0');
  close(sim[1], (cos(1, 0) + cos(1, 2) + cos(1, 4)) / 3, 'patch 1');
  close(sim[4], (cos(4, 1) + cos(4, 3) + cos(4, 5)) / 3, 'patch 4');
  assert.throws(() => neighbourSimilarity(emb, [3, 3], 2), /expected 3x3 patches x 2/);
});

test('parity fixture: norms, outliers and attention from the reference tensors', async () => {
  const { tensors } = await readSafetensors(join(FIX, 'reg4.reference.safetensors'));
  const pre = tensors['sq224.prenorm'];
  const [b, n, d] = pre.shape;
  const grid: [number, number] = [16, 16];
  const r = 4;
  const p = grid[0] * grid[1];
  assert.equal(n, 1 + r + p);

  // Norms: JS and device paths against float64 norms of the reference tensors.
  const want = refNorms(pre);
  const js = l2Norms(toFloat32(pre), d);
  const t = tf.tensor3d(toFloat32(pre), [b, n, d]);
  const dev = tokenNorms(t);
  const devData = await dev.data();
  for (let i = 0; i < want.length; i++) {
    close(js[i], want[i], `prenorm norm ${i}`);
    close(devData[i], want[i], `device norm ${i}`);
  }

  // The whole pipeline on a forward-pass-shaped source built from the reference outputs.
  const src: AnalysisSource = {
    cls: tf.tensor2d(toFloat32(tensors['sq224.cls']), tensors['sq224.cls'].shape as [number, number]),
    registers: tf.tensor3d(toFloat32(tensors['sq224.registers']), tensors['sq224.registers'].shape as [number, number, number]),
    patches: tf.tensor3d(toFloat32(tensors['sq224.patches']), tensors['sq224.patches'].shape as [number, number, number]),
    prenorm: t,
    grid,
    embeddings: tf.zeros([b, p, d]),
    attention: [tf.tensor4d(toFloat32(tensors['sq224.last_attn']), tensors['sq224.last_attn'].shape as [number, number, number, number])],
    layers: [0, 1].map((k) => {
      // Rebuild [B, N, D] layer tokens with the reference patch tokens (CLS and registers zero).
      const pt = toFloat32(tensors[`sq224.layer${k}.patches_prenorm`]);
      const full = new Float32Array(b * n * d);
      for (let i = 0; i < b; i++) full.set(pt.subarray(i * p * d, (i + 1) * p * d), (i * n + 1 + r) * d);
      return tf.tensor3d(full, [b, n, d]);
    }),
  };
  const data = await tokenDataFromOutput(src);
  assert.equal(data.length, b);
  const postWant = [...refNorms(tensors['sq224.cls']).slice(0, b)];
  const regWant = refNorms(tensors['sq224.registers']);
  const patchWant = refNorms(tensors['sq224.patches']);
  const attn = toFloat32(tensors['sq224.last_attn']);
  const heads = tensors['sq224.last_attn'].shape[1];
  for (let i = 0; i < b; i++) {
    const a = analyzeTokens(data[i], { threshold: 'auto' });
    close(a.norms.cls.postnorm, postWant[i], 'cls postnorm');
    close(a.norms.cls.prenorm, want[i * n], 'cls prenorm');
    for (let j = 0; j < r; j++) close(a.norms.registers.postnorm[j], regWant[i * r + j], `register ${j}`);
    for (let j = 0; j < p; j++) {
      close(a.norms.patches.postnorm[j], patchWant[i * p + j], `patch ${j}`);
      close(a.norms.patches.prenorm[j], want[i * n + 1 + r + j], `patch prenorm ${j}`);
    }
    // Outliers: the same answer as detecting directly on the reference norms.
    const direct = detectOutliers(patchWant.slice(i * p, (i + 1) * p), grid);
    assert.deepEqual(a.outliers.indices, direct.indices);
    // Per-layer norms: mean of the reference layer tokens' norms.
    for (const k of [0, 1]) {
      const ln = refNorms(tensors[`sq224.layer${k}.patches_prenorm`]).slice(i * p, (i + 1) * p);
      close(a.layers![k].mean, ln.reduce((s, x) => s + x, 0) / p, `layer ${k} mean`);
      close(a.layers![k].max, Math.max(...ln), `layer ${k} max`);
    }
    // CLS and register attention rows: read straight out of last_attn.
    for (let h = 0; h < heads; h++) {
      for (const q of [0, 1, 4]) {
        const row = ((i * heads + h) * n + q) * n;
        const map = q === 0 ? a.cls!.heads[h] : a.registers[q - 1].heads[h];
        for (let j = 0; j < p; j += 17) close(map[j], attn[row + 1 + r + j], `attn b${i} h${h} q${q} patch ${j}`);
      }
    }
    let mass = 0;
    for (let h = 0; h < heads; h++) for (let j = 0; j < p; j++) mass += attn[((i * heads + h) * n) * n + 1 + r + j];
    close(a.cls!.stats.patchMass, mass / heads, 'cls patch mass');
    assert.ok(a.cls!.stats.entropy > 0 && a.cls!.stats.entropy <= 1);
    const json = JSON.parse(JSON.stringify(analysisToJson(a)));
    assert.equal(json.outliers.count, a.outliers.indices.length);
    assert.equal(json.registers.length, r);
    assert.equal(json.norms.patches.postnorm.length, p);
  }
  tf.dispose([dev, src.cls, src.registers, src.patches, t, src.embeddings, ...src.attention!, ...src.layers!]);
});

test('attentionToPatches rejects malformed input', () => {
  assert.throws(() => attentionToPatches(new Float32Array(10), 2, 0, 1), /not 2 heads x N x N/);
  assert.throws(() => attentionToPatches(new Float32Array(2 * 9), 2, 3, 1), /out of range/);
});

test('model forward: analysis inputs match the reference and an independent patch embedding', async () => {
  const ref = (await readSafetensors(join(FIX, 'reg4.reference.safetensors'))).tensors;
  const w = (await readSafetensors(join(FIX, 'reg4.dinov2.safetensors'))).tensors;
  const model = await loadWeights(join(FIX, 'reg4.dinov2.safetensors'), { config: { num_heads: 3 } });
  const input = ref['sq224.input_nhwc'];
  const x = tf.tensor4d(toFloat32(input), input.shape as [number, number, number, number]);
  const out = model.forward(x, { attention: 'last', layers: true });
  const [data] = await tokenDataFromOutput(out);
  tf.dispose([x, out.cls, out.registers, out.patches, out.prenorm, out.embeddings, ...out.attention!, ...out.layers!]);
  model.dispose();
  const n = 261;
  const d = 96;
  const pre = refNorms(ref['sq224.prenorm']);
  for (let i = 0; i < n; i++) close(data.prenormNorms[i], pre[i], `prenorm norm ${i}`, 1e-4, 1e-3);
  const l1 = refNorms(ref['sq224.layer1.patches_prenorm']);
  for (let i = 0; i < 256; i++) close(data.layerNorms![1][5 + i], l1[i], `layer 1 norm ${i}`, 1e-4, 1e-3);
  // Patch embedding written out from the conv weights: emb[p, o] = b[o] + sum W[o, c, i, j] x[14r + i, 14c + j, c].
  const W = toFloat32(w['patch_embed.proj.weight']);
  const B = toFloat32(w['patch_embed.proj.bias']);
  const px = toFloat32(input);
  const emb = new Float64Array(256 * d);
  for (let r = 0; r < 16; r++) {
    for (let c = 0; c < 16; c++) {
      for (let o = 0; o < d; o++) {
        let s = B[o];
        for (let ch = 0; ch < 3; ch++) {
          for (let i = 0; i < 14; i++) for (let j = 0; j < 14; j++) s += W[((o * 3 + ch) * 14 + i) * 14 + j] * px[((14 * r + i) * 224 + 14 * c + j) * 3 + ch];
        }
        emb[(r * 16 + c) * d + o] = s;
      }
    }
  }
  for (let i = 0; i < emb.length; i += 97) close(data.embeddings![i], emb[i], `embedding ${i}`, 1e-4, 1e-4);
  const simModel = neighbourSimilarity(data.embeddings!, [16, 16], d);
  const simRef = neighbourSimilarity(emb, [16, 16], d);
  for (let i = 0; i < 256; i++) close(simModel[i], simRef[i], `neighbour similarity ${i}`, 1e-4, 1e-4);
  // The last attention rows of CLS against the reference.
  const a = analyzeTokens(data);
  const attn = toFloat32(ref['sq224.last_attn']);
  for (let h = 0; h < 3; h++) for (let j = 0; j < 256; j += 5) close(a.cls!.heads[h][j], attn[(h * n) * n + 5 + j], `cls attention h${h} ${j}`, 1e-4, 2e-5);
  assert.ok(a.redundancy && a.redundancy.normalMean > -1 && a.redundancy.normalMean < 1);
});
