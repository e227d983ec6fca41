/**
 * Test-time registers against the reference implementation (nickjiang2378/test-time-registers, commit in
 * fixtures/ttr/planted.reference.json), on a model with planted register neurons written by
 * fixtures/ttr/make_ttr_reference.py: the neuron ranking of find_register_neurons (with and without the
 * sparsity filter) and every block's output and the final normed tokens of the test-time-register
 * forward, run by the reference image by image (its batch-1 case), within numpy.allclose(1e-4, 1e-4),
 * for vitreg at batch 1 and for the whole batch at once (per image). Plus the planted behaviour (outliers
 * move into the register; tokens where the neurons were silent are unchanged), the automatic threshold,
 * and the JSON file that refuses another model.
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { readFileSync } from 'node:fs';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend, readSafetensors, toFloat32 } from '@vitreg/core';
import {
  findRegisterNeurons,
  loadTestTimeRegisters,
  loadWeights,
  saveTestTimeRegisters,
  testTimeRegisterNeurons,
  testTimeRegistersFile,
  withTestTimeRegisters,
  type VisionTransformer,
} from '../src/index.ts';
import { allclose } from './helpers.ts';

const FIX = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'ttr');
const ref = JSON.parse(readFileSync(join(FIX, 'planted.reference.json'), 'utf8'));
const S = ref.settings as { layer: number; threshold: number; highest_layer: number; top_k: number };
const HEADS = { num_heads: ref.config.num_heads as number };

let tensors: Record<string, { shape: number[]; data: Float32Array }>;
async function loadRef() {
  if (tensors) return tensors;
  const { tensors: t } = await readSafetensors(join(FIX, 'planted.reference.safetensors'));
  tensors = {};
  for (const [k, v] of Object.entries(t)) tensors[k] = { shape: v.shape, data: toFloat32(v) };
  return tensors;
}
const images = () => tf.tensor4d(tensors.images.data, tensors.images.shape as [number, number, number, number]);
const imageCount = () => tensors.images.shape[0];

function close(name: string, actual: ArrayLike<number>, expected: ArrayLike<number>) {
  const err = allclose(actual, expected);
  assert.equal(err, null, `${name}: ${err}`);
}

const model = (variant: string) => loadWeights(join(FIX, `${variant}.safetensors`), { config: HEADS });
const refNeurons = (variant: string) => ref[variant].neurons as { layer: number; neuron: number }[];

/** Per image of a forward: every block's output and the final normed tokens [CLS, registers, patches]. */
async function perImage(m: VisionTransformer, x: tf.Tensor4D, neurons?: { layer: number; neuron: number }[]) {
  const out = m.forward(x, { layers: true, ...(neurons ? { testTimeRegisters: { neurons } } : {}) });
  const B = x.shape[0];
  const layers = await Promise.all(out.layers!.map(async (l) => (await l.data()) as Float32Array));
  const normed = tf.tidy(() => tf.concat([tf.expandDims(out.cls, 1), out.registers, out.patches], 1));
  const nd = (await normed.data()) as Float32Array;
  const N = out.layers![0].shape[1];
  const D = out.layers![0].shape[2];
  tf.dispose([normed, out.cls, out.registers, out.patches, out.prenorm, out.embeddings, ...out.layers!]);
  return Array.from({ length: B }, (_, b) => ({
    layers: layers.map((l) => l.slice(b * N * D, (b + 1) * N * D)),
    normed: nd.slice(b * N * D, (b + 1) * N * D),
    N,
    D,
  }));
}

function checkImage(name: string, got: Awaited<ReturnType<typeof perImage>>[number], key: string) {
  const L = got.layers.length;
  const refLayers = tensors[`${key}.layers`]!;
  const per = refLayers.data.length / L;
  got.layers.forEach((l, k) => close(`${name} block ${k}`, l, refLayers.data.subarray(k * per, (k + 1) * per)));
  close(`${name} normed tokens`, got.normed, tensors[`${key}.normed`]!.data);
}

for (const backend of ['wasm', 'cpu'] as const) {
  describe(`test-time registers vs the reference on ${backend}`, () => {
    before(async () => {
      await initBackend(backend, { log: () => {} });
      await loadRef();
    });

    for (const variant of ['planted', 'planted_noattn']) {
      test(`${variant}: find_register_neurons ranking (with and without the sparsity filter)`, async () => {
        const m = await model(variant);
        const x = images();
        for (const sparsity of [false, true]) {
          const r = await findRegisterNeurons(m, x, {
            layer: S.layer,
            threshold: S.threshold,
            highestLayer: S.highest_layer,
            topK: S.top_k,
            sparsity,
            batchSize: 2,
          });
          const expected = ref[variant][sparsity ? 'ranking_sparsity' : 'ranking'] as [number, number, number][];
          assert.equal(r.ranking.length, expected.length);
          assert.deepEqual(r.images, { used: ref[variant].images_used, skipped: imageCount() - ref[variant].images_used });
          const byKey = new Map(r.ranking.map((e) => [`${e.layer}/${e.neuron}`, e.score]));
          close(
            `scores (sparsity ${sparsity})`,
            expected.map(([l, n]) => byKey.get(`${l}/${n}`)!),
            expected.map(([, , s]) => s),
          );
          // The order wherever the reference's scores are apart by more than the tolerance.
          for (let i = 0; i < 10; i++) {
            if (expected[i][2] - expected[i + 1][2] > 1e-3)
              assert.deepEqual([r.ranking[i].layer, r.ranking[i].neuron], expected[i].slice(0, 2), `rank ${i}`);
          }
          if (!sparsity) {
            assert.deepEqual(
              r.neurons.map((n) => ({ layer: n.layer, neuron: n.neuron })),
              refNeurons(variant),
            );
            assert.deepEqual(
              new Set(r.neurons.map((n) => `${n.layer}/${n.neuron}`)),
              new Set(ref.planted_neurons.map((p: { layer: number; neuron: number }) => `${p.layer}/${p.neuron}`)),
            );
          }
        }
        x.dispose();
        m.dispose();
      });

      test(`${variant}: forward with test-time registers, batch 1 and the whole batch, every block and output`, async () => {
        const m = await model(variant);
        const x = images();
        const B = imageCount();
        const batch = await perImage(m, x, refNeurons(variant));
        const plain = await perImage(m, x);
        for (let i = 0; i < B; i++) {
          const xi = tf.slice(x, [i, 0, 0, 0], [1, -1, -1, -1]);
          const [one] = await perImage(m, xi, refNeurons(variant));
          xi.dispose();
          checkImage(`${variant} image ${i} (batch 1)`, one!, `${variant}.ttr.${i}`);
          checkImage(`${variant} image ${i} (batch ${B})`, batch[i]!, `${variant}.ttr.${i}`);
          checkImage(`${variant} image ${i} plain`, plain[i]!, `${variant}.plain.${i}`);
        }
        x.dispose();
        m.dispose();
      });
    }
  });
}

describe('test-time registers: the planted behaviour', () => {
  before(async () => {
    await initBackend('wasm', { log: () => {} });
    await loadRef();
  });

  test('outlier patches fall into the normal range and the register carries the high norm', async () => {
    const m = await model('planted');
    const x = images();
    const neurons = refNeurons('planted');
    const plain = await perImage(m, x);
    const ttr = await perImage(m, x, neurons);
    const layer = ref.config.depth + S.layer;
    const norms = (v: Float32Array, N: number, D: number) =>
      Array.from({ length: N }, (_, t) => Math.hypot(...v.subarray(t * D, (t + 1) * D)));
    ref.backgrounds.forEach((bg: number[], i: number) => {
      const p = norms(plain[i]!.layers[layer]!, plain[i]!.N, plain[i]!.D);
      const t = norms(ttr[i]!.layers[layer]!, ttr[i]!.N, ttr[i]!.D);
      const patchesPlain = p.slice(1);
      const patchesTtr = t.slice(2);
      for (const b of bg)
        assert.ok(patchesPlain[b]! > 2 * S.threshold, `image ${i} patch ${b} is an outlier without registers (${patchesPlain[b]})`);
      // Below the outlier threshold the neurons were found with, and at most 1/5 of the outlier norm.
      assert.ok(
        Math.max(...patchesTtr) < S.threshold,
        `image ${i}: with a test-time register every patch norm is < ${S.threshold} (${Math.max(...patchesTtr)})`,
      );
      for (const b of bg)
        assert.ok(patchesTtr[b]! < patchesPlain[b]! / 5, `image ${i} patch ${b}: ${patchesTtr[b]} vs ${patchesPlain[b]} without`);
      const normal = Math.max(...patchesPlain.filter((_, k) => !bg.includes(k)));
      if (bg.length > 0) assert.ok(t[1]! > 2 * S.threshold, `image ${i}: the register's norm is high (${t[1]})`);
      else assert.ok(t[1]! < 2 * normal, `image ${i}: no outliers, the register stays low (${t[1]})`);
    });
    x.dispose();
    m.dispose();
  });

  test('tokens where the neurons were silent are unchanged (model without attention mixing)', async () => {
    const m = await model('planted_noattn');
    const x = images();
    const plain = await perImage(m, x);
    const neurons = refNeurons('planted_noattn');
    const ttr = await perImage(m, x, neurons);
    // Silent: every chosen neuron's activation below 1e-6 in magnitude on that token in the plain model.
    const out = m.forward(x, { mlpActivations: true });
    const acts = await Promise.all(out.mlpActivations!.map(async (a) => (await a.data()) as Float32Array));
    const hidden = out.mlpActivations![0].shape[2];
    tf.dispose([out.cls, out.registers, out.patches, out.prenorm, out.embeddings, ...out.mlpActivations!]);
    let silentPatches = 0;
    ref.backgrounds.forEach((bg: number[], i: number) => {
      const { N, D } = plain[i]!;
      const P = N - 1;
      const silent = (t: number) => neurons.every(({ layer, neuron }) => Math.abs(acts[layer]![(i * N + t) * hidden + neuron]!) < 1e-6);
      for (let k = 0; k < plain[i]!.layers.length; k++) {
        const a = plain[i]!.layers[k]!;
        const b = ttr[i]!.layers[k]!;
        assert.ok(silent(0), `image ${i}: the neurons are silent on CLS`);
        close(`image ${i} block ${k} CLS`, b.subarray(0, D), a.subarray(0, D));
        for (let p = 0; p < P; p++) {
          if (!silent(1 + p)) continue;
          if (k === 0) silentPatches++;
          close(`image ${i} block ${k} patch ${p}`, b.subarray((2 + p) * D, (3 + p) * D), a.subarray((1 + p) * D, (2 + p) * D));
        }
      }
      // ...and where they fired, the patch changed.
      for (const p of bg) {
        const last = plain[i]!.layers.length - 1;
        assert.notEqual(
          allclose(ttr[i]!.layers[last]!.subarray((2 + p) * D, (3 + p) * D), plain[i]!.layers[last]!.subarray((1 + p) * D, (2 + p) * D)),
          null,
        );
      }
    });
    assert.ok(silentPatches > (imageCount() * 36) / 2, `most patches are silent (${silentPatches})`);
    x.dispose();
    m.dispose();
  });

  test('the automatic threshold finds the planted neurons first too', async () => {
    const m = await model('planted');
    const x = images();
    const r = await findRegisterNeurons(m, x, { layer: S.layer, threshold: 'auto', highestLayer: S.highest_layer, topK: 3 });
    assert.deepEqual(
      new Set(r.neurons.map((n) => `${n.layer}/${n.neuron}`)),
      new Set(ref.planted_neurons.map((p: { layer: number; neuron: number }) => `${p.layer}/${p.neuron}`)),
    );
    await assert.rejects(findRegisterNeurons(m, x, { layer: S.layer, threshold: 1e6 }), /no image has outlier tokens at block 2/);
    x.dispose();
    m.dispose();
  });

  test('withTestTimeRegisters equals the forward option', async () => {
    const m = await model('planted');
    const x = images();
    const neurons = refNeurons('planted');
    const view = withTestTimeRegisters(m, neurons);
    const a = await perImage(view, x);
    const b = await perImage(m, x, neurons);
    a.forEach((img, i) => assert.deepEqual(img.normed, b[i]!.normed));
    // Its config counts the test-time register, as code slicing [CLS, registers, patches] by it needs.
    assert.equal(view.config.num_register_tokens, m.config.num_register_tokens + 1);
    const out = view.forward(x);
    assert.equal(out.registers.shape[1], view.config.num_register_tokens);
    tf.dispose([out.cls, out.registers, out.patches, out.prenorm, out.embeddings]);
    x.dispose();
    m.dispose();
  });

  test('the JSON file: round trip, --ttr-top-k, refuses another model, names bad fields', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vitreg-ttr-'));
    try {
      const m = await model('planted');
      const other = await model('planted_noattn');
      const x = images();
      const r = await findRegisterNeurons(m, x, { layer: S.layer, threshold: S.threshold, highestLayer: S.highest_layer, topK: S.top_k });
      const path = join(dir, 'neurons.json');
      await saveTestTimeRegisters(path, await testTimeRegistersFile(m, r, 'planted.safetensors'));
      const f = await loadTestTimeRegisters(path);
      assert.deepEqual(f.settings, { layer: -2, threshold: 30, highestLayer: 2, topK: 3, sparsity: null });
      assert.deepEqual(
        (await testTimeRegisterNeurons(f, m, path)).map((n) => [n.layer, n.neuron]),
        refNeurons('planted').map((n) => [n.layer, n.neuron]),
      );
      assert.deepEqual(
        (await testTimeRegisterNeurons(f, m, path, 1)).map((n) => [n.layer, n.neuron]),
        [[refNeurons('planted')[0]!.layer, refNeurons('planted')[0]!.neuron]],
      );
      // A reloaded copy of the same weights is the same model.
      const again = await model('planted');
      assert.equal((await testTimeRegisterNeurons(f, again, path)).length, 3);
      await assert.rejects(testTimeRegisterNeurons(f, other, path), /neurons\.json: made for another model .*planted\.safetensors/);
      const bad = join(dir, 'bad.json');
      await writeFile(bad, JSON.stringify({ ...f, neurons: [{ layer: 9, neuron: 0, score: 1 }] }));
      await assert.rejects(loadTestTimeRegisters(bad), /bad\.json: neurons\[0\]\.layer: expected an integer in \[0, 3\]/);
      await writeFile(bad, '{"format": "something"}');
      await assert.rejects(loadTestTimeRegisters(bad), /bad\.json: format: expected "vitreg-test-time-registers"/);
      await assert.rejects(loadTestTimeRegisters(join(dir, 'missing.json')), /missing\.json: cannot read/);
      x.dispose();
      for (const mm of [m, other, again]) mm.dispose();
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });

  test('bad options and neurons name what was expected', async () => {
    const m = await model('planted');
    const x = images();
    await assert.rejects(findRegisterNeurons(m, x, { layer: 4 }), /layer: expected an integer in \[-4, 3\], got 4/);
    await assert.rejects(findRegisterNeurons(m, x, { highestLayer: 7 }), /highestLayer: expected -1 \(all\) or an integer in \[0, 3\]/);
    assert.throws(
      () => m.forward(x, { testTimeRegisters: { neurons: [{ layer: 0, neuron: 128 }] } }),
      /testTimeRegisters\.neurons\[0\]\.neuron: expected an integer in \[0, 127\], got 128/,
    );
    x.dispose();
    m.dispose();
  });
});

describe('the explicit MLP activation route (test-time registers, mlpActivations) for every FFN', () => {
  before(async () => {
    await initBackend('wasm', { log: () => {} });
  });
  for (const [name, overrides] of [
    ['gelu', {}],
    ['quick_gelu', { act_layer: 'quick_gelu' }],
    ['swiglu', { ffn_layer: 'swiglu' }],
  ] as const) {
    test(`${name}: outputs equal the default (fused) path; the activation has the FFN's width; the test-time register is one more register row`, async () => {
      const { getConfig, VisionTransformer, ffnHiddenDim } = await import('../src/index.ts');
      const c = getConfig('vit_micro_patch8', overrides);
      const m = new VisionTransformer(c, { seed: 3 });
      const x = tf.randomNormal([2, 32, 32, 3], 0, 1, 'float32', 1) as tf.Tensor4D;
      const a = m.forward(x);
      const b = m.forward(x, { mlpActivations: true });
      const t = m.forward(x, { testTimeRegisters: { neurons: [] } });
      close('patches', await b.patches.data(), await a.patches.data());
      close('cls', await b.cls.data(), await a.cls.data());
      assert.deepEqual(
        b.mlpActivations!.map((l) => l.shape),
        Array(c.depth).fill([2, 17, ffnHiddenDim(c)]),
      );
      assert.equal(t.registers.shape[1], 1);
      tf.dispose([
        x,
        a.cls,
        a.registers,
        a.patches,
        a.prenorm,
        a.embeddings,
        b.cls,
        b.registers,
        b.patches,
        b.prenorm,
        b.embeddings,
        ...b.mlpActivations!,
        t.cls,
        t.registers,
        t.patches,
        t.prenorm,
        t.embeddings,
      ]);
      m.dispose();
    });
  }
});
