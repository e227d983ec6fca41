/**
 * Analysis and LOST on WebGPU give wasm's numbers: the reg4 parity model on the 98x140 fixture input.
 * Analysis (norms before and after the final norm, per-layer norms, outliers, redundancy, the CLS and
 * register attention maps and their statistics): every number within 1e-4 + 1e-4 |wasm|, every index,
 * count and verdict equal. LOST (discoverBatch: the last block's keys, F F^T through dataSync, seed,
 * expansion, box): the same seed, similar patches, mask and box. Run by scripts/test-webgpu.sh.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '@vitreg/core';
import { analyzeTokens, loadWeights, tokenDataFromOutput } from '@vitreg/registers';
import { discoverBatch, type ModelInput } from '@vitreg/probe';
import { FIXTURES, reference } from '../../packages/registers/test/helpers.ts';

async function runAll(backend: 'wasm' | 'webgpu') {
  await initBackend(backend, { log: () => {} });
  const input = (await reference('reg4'))['rect98x140.input_nhwc']!;
  const model = await loadWeights(join(FIXTURES, 'reg4.dinov2.safetensors'), { config: { num_heads: 3 } });
  const x = tf.tensor4d(input.data, input.shape as [number, number, number, number]);
  const out = model.forward(x, { attention: 'last', layers: true });
  const [data] = await tokenDataFromOutput(out);
  tf.dispose([x, out.cls, out.registers, out.patches, out.prenorm, out.embeddings, ...out.attention!, ...out.layers!]);
  // A threshold inside the range of the patch norms (9.6 to 10.8) so that the outlier paths (indices,
  // redundancy, masses) have work to do: 12 of the 70 patches are above it.
  const analysis = analyzeTokens(data!, { threshold: 10.5 });
  const [, h, w] = input.shape as [number, number, number, number];
  const modelInput: ModelInput = {
    data: input.data,
    paddedHeight: h,
    paddedWidth: w,
    width: w,
    height: h,
    rgb: new Uint8Array(0),
    boxes: [],
    scale: [1, 1],
  };
  const [lost] = discoverBatch(model, [modelInput], { kPatches: 20 });
  model.dispose();
  return { analysis, lost: lost! };
}

/** Walks two JSON values: numbers within 1e-4 + 1e-4 |expected|, everything else equal. Returns how many numbers were compared. */
function close(actual: unknown, expected: unknown, path: string): number {
  if (typeof expected === 'number') {
    assert.equal(typeof actual, 'number', path);
    assert.ok(
      Math.abs((actual as number) - expected) <= 1e-4 + 1e-4 * Math.abs(expected) || (Number.isNaN(expected) && Number.isNaN(actual)),
      `${path}: webgpu ${actual} vs wasm ${expected}`,
    );
    return 1;
  }
  if (ArrayBuffer.isView(expected) || Array.isArray(expected)) {
    const e = Array.from(expected as ArrayLike<unknown>);
    const a = Array.from(actual as ArrayLike<unknown>);
    assert.equal(a.length, e.length, `${path}: length`);
    return e.reduce<number>((n, v, i) => n + close(a[i], v, `${path}[${i}]`), 0);
  }
  if (expected !== null && typeof expected === 'object') {
    assert.deepEqual(Object.keys(actual as object).sort(), Object.keys(expected).sort(), `${path}: keys`);
    return Object.entries(expected).reduce((n, [k, v]) => n + close((actual as Record<string, unknown>)[k], v, `${path}.${k}`), 0);
  }
  assert.equal(actual, expected, path);
  return 0;
}

test('analysis and LOST on webgpu equal wasm (reg4, 98x140)', async () => {
  const wasm = await runAll('wasm');
  const gpu = await runAll('webgpu');
  const numbers = close(gpu.analysis, wasm.analysis, 'analysis');
  assert.ok(numbers > 1000, `only ${numbers} numbers compared`);
  console.log(
    `# ${numbers} numbers; outliers ${wasm.analysis.outliers.indices.length} of ${wasm.analysis.norms.patches.postnorm.length}; box ${wasm.lost.box}`,
  );
  assert.ok(wasm.analysis.outliers.indices.length > 0, 'no outliers at threshold 10.5: the outlier paths were not exercised');
  assert.deepEqual(gpu.lost.box, wasm.lost.box);
  assert.deepEqual(gpu.lost.seed, wasm.lost.seed);
  assert.deepEqual(Array.from(gpu.lost.similars), Array.from(wasm.lost.similars));
  assert.deepEqual(Array.from(gpu.lost.mask), Array.from(wasm.lost.mask));
  assert.deepEqual(Array.from(gpu.lost.degrees), Array.from(wasm.lost.degrees));
  close(Array.from(gpu.lost.scores), Array.from(wasm.lost.scores), 'lost.scores');
});
