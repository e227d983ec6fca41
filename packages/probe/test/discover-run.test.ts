/**
 * runDiscovery (discover-run.ts) without the CLI: LOST over a synthetic dataset through an Encoder into a
 * folder, the same boxes as discoverBatch on the model, CorLoc, pictures, a rerun that skips done images
 * and redoes a torn line, a folder of other settings refused; and the three image sources.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodePng, initBackend, InputError, SettingsMismatchError, SyntheticDataset } from '@vitreg/core';
import { getConfig, TfjsEncoder, VisionTransformer } from '@vitreg/registers';
import {
  datasetItemNames,
  datasetSource,
  discoverBatch,
  discoverEncoded,
  fileSource,
  prepareInput,
  runDiscovery,
  tensorSource,
  type DiscoveryRecord,
} from '../src/index.js';

await initBackend('wasm', { log: () => {} });

const model = new VisionTransformer(getConfig('vit_micro_patch8_reg4'), { seed: 1 });
const encoder = new TfjsEncoder(model, false);
const data = new SyntheticDataset({ seed: 3, count: 5, size: 32 });
const lines = async (dir: string): Promise<DiscoveryRecord[]> =>
  (await readFile(join(dir, 'results.jsonl'), 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));

test('discoverEncoded on a TfjsEncoder gives discoverBatch boxes', async () => {
  const inputs = await Promise.all([0, 1, 2].map(async (i) => prepareInput(await data.get(i), { kind: 'native' }, 8)));
  const a = discoverBatch(model, inputs, { features: 'values', kPatches: 10 });
  const b = await discoverEncoded(encoder, inputs, { features: 'values', kPatches: 10 });
  assert.deepEqual(
    b.map((r) => [r.seed, r.box]),
    a.map((r) => [r.seed, r.box]),
  );
});

test('runDiscovery: results, CorLoc, pictures; a rerun skips done images, redoes a torn line, refuses other settings', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-discover-run-'));
  try {
    const source = datasetSource(data, { kind: 'native' });
    assert.deepEqual(source.names, datasetItemNames(data));
    assert.deepEqual(source.names.slice(0, 2), ['synthetic-train-0', 'synthetic-train-1']);
    const opts = { weights: 'micro.safetensors', batchSize: 2, pictures: true, progress: false };
    const c = await runDiscovery(encoder, source, dir, opts);
    assert.ok(c && c.images === 5);
    const recs = await lines(dir);
    assert.deepEqual(
      recs.map((r) => r.image),
      source.names,
    );
    const inputs = await Promise.all(source.names.map((_, i) => source.load(i, 8)));
    const want = discoverBatch(model, inputs);
    recs.forEach((r, i) => assert.deepEqual([r.seed, r.box], [want[i].seed, want[i].box]));
    assert.equal(c.hits, recs.filter((r) => r.hit).length);
    const saved = JSON.parse(await readFile(join(dir, 'corloc.json'), 'utf8'));
    assert.deepEqual(saved, { ...c, weights: 'micro.safetensors', features: 'keys', kPatches: 100, geometry: { kind: 'native' } });
    const run = JSON.parse(await readFile(join(dir, 'run.json'), 'utf8'));
    assert.deepEqual(Object.keys(run), ['weights', 'features', 'kPatches', 'geometry', 'config']);
    assert.equal((await readdir(join(dir, 'pictures'))).length, 5);
    // Two lines kept and a torn third: the rerun adds back exactly the three missing images.
    const text = await readFile(join(dir, 'results.jsonl'), 'utf8');
    const kept = text.split('\n').slice(0, 2).join('\n') + '\n' + text.split('\n')[2]!.slice(0, 20);
    await writeFile(join(dir, 'results.jsonl'), kept);
    assert.deepEqual(await runDiscovery(encoder, source, dir, opts), c);
    assert.deepEqual(await lines(dir), recs);
    await assert.rejects(runDiscovery(encoder, source, dir, { ...opts, kPatches: 50 }), (err: Error) => {
      assert.ok(err instanceof SettingsMismatchError);
      assert.deepEqual(err.changes, [{ key: 'kPatches', before: 100, now: 50 }]);
      return true;
    });
    // An input the model cannot take is an InputError naming the problem.
    const odd = { ...source, load: async (i: number, p: number) => ({ ...(await source.load(i, p)), paddedWidth: 33 }) };
    await assert.rejects(runDiscovery(encoder, odd, join(dir, 'odd'), opts), (err: Error) => err instanceof InputError);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('file and tensor sources: names, geometry, no ground truth', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-discover-src-'));
  try {
    const item = await data.get(0);
    const file = join(dir, 'a.png');
    await writeFile(file, await encodePng(item.image, item.width, item.height));
    const files = fileSource([file], { kind: 'square', size: 16 });
    const fromFile = await files.load(0, 8);
    assert.deepEqual([files.names, fromFile.paddedWidth, fromFile.boxes], [[file], 16, []]);
    const x = prepareInput(item, { kind: 'native' }, 8);
    const tensor = tensorSource({ data: x.data, shape: [1, x.paddedHeight, x.paddedWidth, 3] }, 'x.safetensors:images');
    assert.deepEqual(tensor.names, ['x.safetensors:images[0]']);
    assert.deepEqual(tensor.geometry, { kind: 'native' });
    const fromTensor = await tensor.load(0, 8);
    assert.deepEqual(fromTensor.data, x.data);
    assert.equal(fromTensor.rgb.length, x.paddedHeight * x.paddedWidth * 3);
    const c = await runDiscovery(encoder, tensor, join(dir, 't'), { weights: 'w', progress: false });
    assert.equal(c, null, 'no ground truth, no CorLoc');
    assert.ok(!existsSync(join(dir, 't', 'corloc.json')));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
