import { test } from 'node:test';
import assert from 'node:assert/strict';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import * as tf from '@tensorflow/tfjs-core';
import '@tensorflow/tfjs-backend-cpu';
import { readSafetensors, toFloat32, type HostTensor } from '@vitreg/core';
import { analyzeTokens, analysisToJson, tokenDataFromOutput, type AnalysisSource, type TokenData } from '../src/analysis.js';
import { attentionToPatches } from '../src/attention-maps.js';
import { l2Norms, tokenNorms } from '../src/norms.js';
import { DEFAULT_OUTLIER_RULE, detectOutliers, otsuThreshold, testBimodality } from '../src/outliers.js';
import { neighbourSimilarity } from '../src/redundancy.js';
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

/** `n` normal samples shifted and scaled to sample mean exactly 0 and (population) std exactly 1. */
function standardNormals(n: number, seed: number): number[] {
  const z = normals(n, seed);
  const m = z.reduce((a, b) => a + b, 0) / n;
  const s = Math.sqrt(z.reduce((a, b) => a + (b - m) ** 2, 0) / n);
  return z.map((x) => (x - m) / s);
}

/** Mean and population std of the natural logs of `v`, written out. */
function logStats(v: number[]): { mean: number; std: number } {
  const l = v.map(Math.log);
  const mean = l.reduce((a, b) => a + b, 0) / l.length;
  return { mean, std: Math.sqrt(l.reduce((a, b) => a + (b - mean) ** 2, 0) / l.length) };
}

/**
 * A bimodal norm set: normal tokens 50 exp(0.2 z), and one token in `every` (from index 7) an outlier
 * `factor` x 50 exp(0.1 z), i.e. `factor` times the normal tokens' median. Returns the norms, the planted
 * indices and, computed from the two planted classes directly, the ratio of their geometric means and
 * Ashman's D on log norms.
 */
function plantedSet(n: number, factor: number, seed: number, every = 50) {
  const z = normals(n, seed);
  const isOut = (i: number) => i % every === 7;
  const norms = z.map((x, i) => (isOut(i) ? factor * 50 * Math.exp(0.1 * x) : 50 * Math.exp(0.2 * x)));
  const planted = norms.map((_, i) => i).filter(isOut);
  const lo = logStats(norms.filter((_, i) => !isOut(i)));
  const hi = logStats(planted.map((i) => norms[i]));
  return {
    norms,
    planted,
    ratio: Math.exp(hi.mean - lo.mean),
    separation: (Math.SQRT2 * (hi.mean - lo.mean)) / Math.hypot(lo.std, hi.std),
    maxNormal: Math.max(...norms.filter((_, i) => !isOut(i))),
    minOutlier: Math.min(...planted.map((i) => norms[i])),
  };
}

/**
 * Every patch-norm set of the fixture models (random-weight DINOv2 models run through the official
 * code): output patches after the final norm, the last block's patch tokens before it, and every
 * block's patch tokens, per image, as float64 norms of the reference tensors.
 */
async function fixtureNormSets(): Promise<{ name: string; norms: number[]; grid: [number, number] }[]> {
  const sets: { name: string; norms: number[]; grid: [number, number] }[] = [];
  for (const [model, r] of [
    ['reg4', 4],
    ['reg0', 0],
    ['reg4_swiglu', 4],
  ] as const) {
    const { tensors } = await readSafetensors(join(FIX, `${model}.reference.safetensors`));
    for (const [input, grid] of [
      ['sq224', [16, 16]],
      ['rect98x140', [7, 10]],
    ] as const) {
      const p = grid[0] * grid[1];
      const add = (key: string, skip: number) => {
        const all = refNorms(tensors[`${input}.${key}`]);
        const per = p + skip;
        for (let b = 0; b < all.length / per; b++) {
          sets.push({ name: `${model} ${input}[${b}] ${key}`, norms: all.slice(b * per + skip, (b + 1) * per), grid: [grid[0], grid[1]] });
        }
      };
      add('patches', 0);
      add('prenorm', 1 + r);
      add('layer0.patches_prenorm', 0);
      add('layer1.patches_prenorm', 0);
    }
  }
  return sets;
}

test('otsuThreshold: the hand-computed split and a brute-force search', () => {
  // Two clusters: every split but 1.1 | 4.9 mixes them, so the threshold is the midpoint 3.0.
  assert.equal(otsuThreshold([1, 1.1, 0.9, 1.05, 5, 5.2, 4.9]), 3);
  assert.equal(otsuThreshold([3, 3, 3]), 3);
  // [1, 2, 6]: split after 1 scores (1/3)(2/3)(1 - 4)^2 = 2, after 2 scores (2/3)(1/3)(1.5 - 6)^2 = 4.5.
  assert.equal(otsuThreshold([6, 1, 2]), 4);
  // Skewed data: the between-class variance of every split, written out, picks the same midpoint.
  const v = normals(40, 11)
    .map((x) => Math.exp(x))
    .sort((a, b) => a - b);
  let best = -1;
  let want = NaN;
  for (let k = 1; k < v.length; k++) {
    const a = v.slice(0, k);
    const b = v.slice(k);
    const ma = a.reduce((s, x) => s + x, 0) / a.length;
    const mb = b.reduce((s, x) => s + x, 0) / b.length;
    const score = ((a.length * b.length) / v.length ** 2) * (ma - mb) ** 2;
    if (score > best) [best, want] = [score, (v[k - 1] + v[k]) / 2];
  }
  close(otsuThreshold(v), want, 'brute-force Otsu', 1e-12, 0);
});

test('auto threshold: outliers 5x, 10x and 20x the median are all found, and nothing else', () => {
  for (const factor of [5, 10, 20]) {
    for (const n of [256, 1369]) {
      for (const seed of [1, 2, 3]) {
        const s = plantedSet(n, factor, 100 * seed + factor);
        const what = `${factor}x, n=${n}, seed ${seed}`;
        const side = Math.sqrt(n);
        const r = detectOutliers(s.norms, [side, side]);
        assert.equal(r.method, 'auto');
        assert.deepEqual(r.indices, s.planted, what);
        assert.deepEqual(
          r.positions,
          s.planted.map((i) => [Math.floor(i / side), i % side]),
          what,
        );
        assert.equal(r.fraction, s.planted.length / n);
        assert.ok(
          r.threshold! > s.maxNormal && r.threshold! < s.minOutlier,
          `${what}: threshold ${r.threshold} not in (${s.maxNormal}, ${s.minOutlier})`,
        );
        // The measured separation is that of the planted classes (the fit's responsibilities are 0 or 1).
        const bm = r.bimodality!;
        close(bm.ratio, s.ratio, `${what}: mode ratio`, 1e-5, 0);
        close(bm.separation, s.separation, `${what}: Ashman's D`, 1e-4, 0);
        close(bm.high.weight, s.planted.length / n, `${what}: high weight`, 1e-6, 0);
        assert.ok(bm.bimodal);
      }
    }
  }
  // A single far token among 100 is found too.
  const one = normals(100, 3).map((x) => 40 * Math.exp(0.15 * x));
  one[37] = 600;
  assert.deepEqual(detectOutliers(one, [10, 10]).indices, [37]);
});

test("auto threshold: the fixture models' patch norms are unimodal, nothing is flagged", async () => {
  const sets = await fixtureNormSets();
  assert.equal(sets.length, 3 * (4 * 2 + 4 * 1));
  for (const { name, norms, grid } of sets) {
    // These norms span less than a factor 3 (max / min, computed here), so no two modes can be 3x apart.
    const spread = Math.max(...norms) / Math.min(...norms);
    assert.ok(spread < 3, `${name}: max/min ${spread}`);
    const r = detectOutliers(norms, grid);
    assert.deepEqual(r.indices, [], `${name}: ${r.bimodality!.reason}`);
    assert.equal(r.threshold, null);
    assert.match(r.bimodality!.reason, /modes too close \(high\/low mode ratio 1\.\d+ < 3\)/, name);
    // The same tokens with ~2% of them made 5x / 10x / 20x larger: exactly those are found.
    for (const factor of [5, 10, 20]) {
      const every = norms.length > 100 ? 50 : 35;
      const planted = norms.map((_, i) => i).filter((i) => i % every === 11);
      const raised = norms.map((x, i) => (i % every === 11 ? factor * x : x));
      assert.deepEqual(detectOutliers(raised, grid).indices, planted, `${name} with ${factor}x outliers`);
    }
  }
});

test("auto threshold: the demo's case, norms 7.97-8.17, has no outliers", () => {
  // 85% of the tokens around 7.99, 15% around 8.1: two tight clusters 1.4% apart. Without the ratio
  // criterion they pass every other test (D ~ 7, a deep valley) and 15% of the tokens were "outliers".
  const z = normals(256, 1);
  const norms = z.map((x, i) => (i % 7 === 3 ? 8.1 + 0.02 * x : 7.99 + 0.006 * x));
  assert.ok(Math.min(...norms) >= 7.97 && Math.max(...norms) <= 8.17);
  const r = detectOutliers(norms, [16, 16]);
  assert.deepEqual(r.indices, []);
  assert.equal(r.threshold, null);
  assert.equal(r.bimodality!.bimodal, false);
  assert.match(r.bimodality!.reason, /^modes too close \(high\/low mode ratio 1\.01\d < 3\)$/);
  const upper = norms.map((_, i) => i).filter((i) => i % 7 === 3);
  close(
    r.bimodality!.ratio,
    Math.exp(logStats(upper.map((i) => norms[i])).mean - logStats(norms.filter((_, i) => i % 7 !== 3)).mean),
    'demo mode ratio',
    1e-4,
    0,
  );
  // The same set with the ratio criterion switched off: the old behaviour, the upper cluster flagged.
  assert.deepEqual(detectOutliers(norms, [16, 16], { minRatio: 1 }).indices, upper);
});

test('auto threshold: the boundary of the mode ratio', () => {
  // Normal log norms with mean exactly log 50, outliers with mean exactly log(50 ratio): the measured
  // ratio of the modes is `ratio` itself.
  const lo = standardNormals(490, 5).map((x) => 50 * Math.exp(0.1 * x));
  const hi = standardNormals(10, 6).map((x) => 50 * Math.exp(0.05 * x));
  const planted = Array.from({ length: 10 }, (_, k) => 50 * k + 25);
  const build = (ratio: number) => {
    let next = 0;
    return Array.from({ length: 500 }, (_, i) => (i % 50 === 25 ? hi[(i - 25) / 50] * ratio : lo[next++]));
  };
  for (const [ratio, found] of [
    [2.97, false],
    [2.999, false],
    [3.001, true],
    [3.03, true],
  ] as const) {
    const r = detectOutliers(build(ratio), null);
    close(r.bimodality!.ratio, ratio, `measured ratio at ${ratio}`, 1e-6, 0);
    if (found) {
      assert.deepEqual(r.indices, planted, `ratio ${ratio}`);
    } else {
      assert.deepEqual(r.indices, [], `ratio ${ratio}`);
      assert.match(r.bimodality!.reason, /^modes too close \(high\/low mode ratio 2\.9\d+ < 3\)$/);
    }
  }
  // The minimum is an option: 10x outliers pass minRatio 9.9 and fail 10.1.
  assert.deepEqual(detectOutliers(build(10), null, { minRatio: 9.9 }).indices, planted);
  const strict = detectOutliers(build(10), null, { minRatio: 10.1 });
  assert.deepEqual(strict.indices, []);
  assert.match(strict.bimodality!.reason, /mode ratio 10\.000 < 10\.1/);
  assert.throws(() => detectOutliers(build(10), null, { minRatio: 0.5 }), /minRatio must be a finite number >= 1, got 0\.5/);
  assert.throws(() => detectOutliers(build(10), null, { maxFraction: 0 }), /maxFraction must be in \(0, 1\], got 0/);
  assert.throws(() => detectOutliers(build(10), null, { minCount: 1.5 }), /minCount must be an integer >= 2, got 1\.5/);
});

test('auto threshold: unimodal norm sets give no outliers', () => {
  for (const seed of [1, 2, 3, 4, 5]) {
    for (const n of [64, 256, 1369]) {
      const gauss = normals(n, seed).map((x) => 50 * Math.exp(0.3 * x));
      const r = detectOutliers(gauss, null);
      assert.equal(r.indices.length, 0, `log-normal n=${n} seed=${seed}: ${r.bimodality!.reason}`);
      assert.equal(r.threshold, null);
      // Uniform norms (flat, wide: 20 to 100, a factor 5) are not bimodal either.
      let s = seed;
      const uni = Array.from({ length: n }, () => 20 + 80 * ((s = (Math.imul(s, 69069) + 1) >>> 0) / 2 ** 32));
      const u = detectOutliers(uni, null);
      assert.equal(u.indices.length, 0, `uniform n=${n} seed=${seed}: ${u.bimodality!.reason}`);
    }
  }
  // Degenerate and tiny inputs.
  const flat = detectOutliers(new Array(50).fill(10), null);
  assert.deepEqual([flat.indices, flat.bimodality!.reason], [[], 'all values equal']);
  assert.match(testBimodality([1, 2, 100]).reason, /only 3 values \(need 8\)/);
  // A symmetric 50/50 split 10x apart is not an outlier set: the high side is not a minority.
  const half = normals(200, 9).map((x, i) => (i % 2 ? 10 : 100) * Math.exp(0.05 * x));
  const h = detectOutliers(half, null);
  assert.equal(h.indices.length, 0);
  assert.match(h.bimodality!.reason, /^high component holds 50\.0% of tokens \(> 20%\)$/);
});

test('stats JSON: threshold, measured separation and the rule; "no outliers" with the reason', () => {
  // 16x16 patches, no registers, only norms: planted 10x outliers.
  const s = plantedSet(256, 10, 42);
  const data = (norms: number[]): TokenData => {
    const all = Float32Array.from([60, ...norms]);
    return { grid: [16, 16], numRegisters: 0, dim: 8, prenormNorms: all, postnormNorms: all };
  };
  const json = JSON.parse(JSON.stringify(analysisToJson(analyzeTokens(data(s.norms)))));
  const o = json.outliers;
  assert.equal(o.method, 'auto');
  assert.equal(o.count, s.planted.length);
  assert.deepEqual(o.indices, s.planted);
  assert.ok(o.threshold > s.maxNormal && o.threshold < s.minOutlier, `threshold ${o.threshold}`);
  assert.equal(o.bimodality.bimodal, true);
  close(o.bimodality.ratio, s.ratio, 'JSON mode ratio', 1e-4, 0);
  close(o.bimodality.separation, s.separation, 'JSON separation', 1e-4, 0);
  assert.deepEqual(o.bimodality.rule, { minCount: 8, maxFraction: 0.2, minSeparation: 2, minRatio: 3, maxValley: 0.5 });
  assert.deepEqual({ ...DEFAULT_OUTLIER_RULE }, o.bimodality.rule);
  assert.equal(
    o.rule,
    "auto: 2-Gaussian mixture on log norms; outliers only if BIC favours two components, Ashman's D >= 2, " +
      'high/low mode ratio >= 3, valley <= 0.5, high component <= 20% of tokens, >= 8 tokens',
  );
  // Options reach the JSON; a rule that fails says why and flags nothing.
  const strict = JSON.parse(JSON.stringify(analysisToJson(analyzeTokens(data(s.norms), { minRatio: 25 })))).outliers;
  assert.deepEqual([strict.count, strict.threshold, strict.bimodality.bimodal], [0, null, false]);
  assert.equal(strict.bimodality.rule.minRatio, 25);
  assert.match(strict.bimodality.reason, /^modes too close \(high\/low mode ratio \d+\.\d{3} < 25\)$/);
  assert.match(strict.rule, /mode ratio >= 25/);
  // Fixed threshold: the rule is the threshold.
  const fixed = JSON.parse(JSON.stringify(analysisToJson(analyzeTokens(data(s.norms), { threshold: 150 })))).outliers;
  assert.deepEqual([fixed.method, fixed.rule, fixed.threshold, fixed.bimodality], ['fixed', 'fixed: norm > 150', 150, null]);
  assert.deepEqual(
    fixed.indices,
    s.norms
      .map((x, i) => [x, i])
      .filter(([x]) => x > 150)
      .map(([, i]) => i),
  );
});

test('fixed threshold: norms strictly above it', () => {
  const r = detectOutliers([10, 150, 151, 3000], [2, 2], { threshold: 150 });
  assert.equal(r.method, 'fixed');
  assert.deepEqual(r.indices, [2, 3]);
  assert.deepEqual(r.positions, [
    [1, 0],
    [1, 1],
  ]);
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
    // Outliers: these norms are unimodal (max / min < 3), so the automatic rule flags none, at any layer.
    const mine = patchWant.slice(i * p, (i + 1) * p);
    assert.ok(Math.max(...mine) / Math.min(...mine) < 3);
    assert.deepEqual([a.outliers.indices, a.outliers.threshold, a.firstOutlierLayer], [[], null, null]);
    assert.deepEqual(
      a.layers!.map((l) => [l.outliers, l.threshold]),
      [
        [0, null],
        [0, null],
      ],
    );
    // A fixed threshold between the 10th and 11th largest reference norms: exactly the 10 largest.
    const desc = mine.map((v, j) => [v, j]).sort((x, y) => y[0] - x[0]);
    const fixed = analyzeTokens(data[i], { threshold: (desc[9][0] + desc[10][0]) / 2 });
    assert.deepEqual(
      fixed.outliers.indices,
      desc
        .slice(0, 10)
        .map(([, j]) => j)
        .sort((x, y) => x - y),
    );
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
    // CLS map statistics, written out: mean over heads of the CLS row over the patches.
    const clsMap = Array.from({ length: p }, (_, j) => {
      let m = 0;
      for (let h = 0; h < heads; h++) m += attn[(i * heads + h) * n * n + 1 + r + j];
      return m / heads;
    });
    const mass = clsMap.reduce((x, y) => x + y, 0);
    close(a.cls!.stats.patchMass, mass, 'cls patch mass');
    const entropy = -clsMap.reduce((e, m) => e + (m / mass) * Math.log(m / mass), 0) / Math.log(p);
    close(a.cls!.stats.entropy, entropy, 'cls entropy');
    const peak = clsMap.indexOf(Math.max(...clsMap));
    assert.deepEqual(a.cls!.stats.peak, [Math.floor(peak / grid[1]), peak % grid[1]]);
    // stats.json's view: reference norms to 5 significant digits, no outliers and why.
    const json = JSON.parse(JSON.stringify(analysisToJson(a)));
    for (let j = 0; j < p; j++) close(json.norms.patches.postnorm[j], patchWant[i * p + j], `JSON patch norm ${j}`, 1e-4, 0);
    assert.deepEqual(
      json.registers.map((x: { postnormNorm: number }) => x.postnormNorm),
      regWant.slice(i * r, (i + 1) * r).map((x) => Number(x.toPrecision(5))),
    );
    assert.deepEqual([json.outliers.count, json.outliers.threshold, json.outliers.bimodality.bimodal], [0, null, false]);
    assert.match(json.outliers.bimodality.reason, /modes too close \(high\/low mode ratio 1\.\d+ < 3\)/);
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
          for (let i = 0; i < 14; i++)
            for (let j = 0; j < 14; j++) s += W[((o * 3 + ch) * 14 + i) * 14 + j] * px[((14 * r + i) * 224 + 14 * c + j) * 3 + ch];
        }
        emb[(r * 16 + c) * d + o] = s;
      }
    }
  }
  for (let i = 0; i < emb.length; i += 97) close(data.embeddings![i], emb[i], `embedding ${i}`, 1e-4, 1e-4);
  // Mean cosine to the 4-neighbours, written out on the float64 embedding above.
  const cosine = (i: number, j: number) => {
    let dot = 0;
    let ni = 0;
    let nj = 0;
    for (let k = 0; k < d; k++) {
      dot += emb[i * d + k] * emb[j * d + k];
      ni += emb[i * d + k] ** 2;
      nj += emb[j * d + k] ** 2;
    }
    return dot / Math.sqrt(ni * nj);
  };
  const simRef = Array.from({ length: 256 }, (_, i) => {
    const [r, c] = [Math.floor(i / 16), i % 16];
    const nb = [
      [r - 1, c],
      [r + 1, c],
      [r, c - 1],
      [r, c + 1],
    ].filter(([y, x]) => y >= 0 && y < 16 && x >= 0 && x < 16);
    return nb.reduce((s, [y, x]) => s + cosine(i, y * 16 + x), 0) / nb.length;
  });
  const simModel = neighbourSimilarity(data.embeddings!, [16, 16], d);
  for (let i = 0; i < 256; i++) close(simModel[i], simRef[i], `neighbour similarity ${i}`, 1e-4, 1e-4);
  // The last attention rows of CLS against the reference.
  const a = analyzeTokens(data);
  const attn = toFloat32(ref['sq224.last_attn']);
  for (let h = 0; h < 3; h++)
    for (let j = 0; j < 256; j += 5) close(a.cls!.heads[h][j], attn[h * n * n + 5 + j], `cls attention h${h} ${j}`, 1e-4, 2e-5);
  // No outliers here (unimodal norms), so every patch is "normal": the mean of all similarities.
  assert.equal(a.redundancy!.outlierMean, null);
  close(a.redundancy!.normalMean, simRef.reduce((s, x) => s + x, 0) / 256, 'redundancy normal mean', 1e-4, 1e-5);
});
