/**
 * writeFeatureFile (feature-file.ts): an encoder's outputs over batches as one safetensors file, equal to
 * one encode of all images; the metadata from the grid; an error from the batches leaves no file.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { initBackend, readSafetensors, Rng, toFloat32 } from '@vitreg/core';
import { featureTensors, getConfig, TfjsEncoder, VisionTransformer, writeFeatureFile, type ImageBatch } from '../src/index.ts';

await initBackend('wasm', { log: () => {} });

test('writeFeatureFile streams every output of every batch; featureTensors names them', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-feature-file-'));
  try {
    const enc = new TfjsEncoder(new VisionTransformer(getConfig('vit_micro_patch8_reg4'), { seed: 1 }));
    const rng = new Rng(0);
    const all: ImageBatch = { data: Float32Array.from({ length: 3 * 16 * 24 * 3 }, () => rng.normal()), shape: [3, 16, 24, 3] };
    const n = 16 * 24 * 3;
    async function* batches() {
      yield { data: all.data.subarray(0, 2 * n), shape: [2, 16, 24, 3] } as ImageBatch;
      yield { data: all.data.subarray(2 * n), shape: [1, 16, 24, 3] } as ImageBatch;
    }
    const path = join(dir, 'f.safetensors');
    const meta = (g: [number, number]) => ({ grid: JSON.stringify(g) });
    const r = await writeFeatureFile(enc, batches(), path, { count: 3, attention: 'all', layers: true, metadata: meta, progress: false });
    assert.deepEqual(r.grid, [2, 3]);
    const { tensors, metadata } = await readSafetensors(path);
    assert.deepEqual(metadata, { grid: '[2,3]' });
    const whole = featureTensors(await enc.encode(all, { attention: 'all', layers: true }), { attention: 'all', layers: true });
    assert.deepEqual(Object.keys(tensors).sort(), [...whole.keys()].sort());
    assert.ok(whole.has('attention.layer1') && whole.has('layer0.prenorm') && whole.has('registers'));
    for (const [name, t] of whole) {
      assert.deepEqual(tensors[name]!.shape, t.shape, name);
      const got = toFloat32(tensors[name]!);
      let worst = 0;
      for (let i = 0; i < got.length; i++) worst = Math.max(worst, Math.abs(got[i]! - t.data[i]!));
      assert.ok(worst < 1e-4, `${name}: ${worst}`);
    }
    async function* failing() {
      yield { data: all.data.subarray(0, n), shape: [1, 16, 24, 3] } as ImageBatch;
      throw new Error('the second batch is unreadable');
    }
    const failed = writeFeatureFile(enc, failing(), join(dir, 'g.safetensors'), { count: 2, progress: false });
    await assert.rejects(failed, /the second batch is unreadable/);
    assert.ok(!existsSync(join(dir, 'g.safetensors')));
    assert.deepEqual((await readdir(dir)).sort(), ['f.safetensors']);
    await enc.dispose();
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
