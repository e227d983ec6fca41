/**
 * runProbeTask (probe-task.ts) without the CLI: a token task and a dense task into results files beside
 * each other, reused when their settings match, refused (SettingsMismatchError) when not; the dense
 * task's head file and its feature cache removed when done; probe errors as InputErrors. And
 * openProbeSource's parts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  encodePng,
  ensureGradients,
  initBackend,
  InputError,
  readSafetensors,
  SettingsMismatchError,
  SyntheticDataset,
  SyntheticDenseDataset,
} from '@vitreg/core';
import { getConfig, VisionTransformer } from '@vitreg/registers';
import { isDenseTask, openProbeSource, runDenseProbe, runProbe, runProbeTask, type ProbeReport } from '../src/index.js';

await initBackend('wasm', { log: () => {} });
await ensureGradients();
const model = new VisionTransformer(getConfig('vit_micro_patch8_reg4'), { seed: 1 });

test('a token task: the report of runProbe with its settings; reused, or refused with other settings', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-probe-task-'));
  try {
    const train = { dataset: new SyntheticDataset({ seed: 1, count: 8, size: 32 }) };
    const test = { dataset: new SyntheticDataset({ seed: 1, count: 4, size: 32, split: 'val' }) };
    const file = join(dir, 'results-class.json');
    const o = {
      task: 'class' as const,
      file,
      weights: 'runs/micro.safetensors',
      settings: { data: 'synthetic' },
      size: 32,
      steps: 20,
      progress: false,
    };
    const r = await runProbeTask(model, train, test, o);
    assert.equal(r.reused, false);
    assert.deepEqual(r.settings, { data: 'synthetic', token: 'cls', threshold: 'auto', register: 0, steps: 20 });
    const direct = await runProbe(model, train, test, { task: 'class', token: 'cls', size: 32, steps: 20 });
    assert.deepEqual((r.report as ProbeReport).accuracy, direct.accuracy);
    const saved = JSON.parse(await readFile(file, 'utf8'));
    assert.deepEqual(Object.keys(saved).slice(0, 3), ['weights', 'config', 'settings']);
    assert.equal(saved.weights, 'runs/micro.safetensors');
    const again = await runProbeTask(model, train, test, o);
    assert.equal(again.reused, true);
    assert.equal((again.report as ProbeReport).accuracy, direct.accuracy);
    await assert.rejects(runProbeTask(model, train, test, { ...o, steps: 30 }), (err: Error) => {
      assert.ok(err instanceof SettingsMismatchError);
      assert.equal(err.message, `${file} holds the results of a run with other settings (steps 20, not 30)`);
      return true;
    });
    await assert.rejects(runProbeTask(model, train, test, { ...o, file: join(dir, 'x.json'), size: 30 }), (err: Error) => {
      assert.ok(err instanceof InputError && !(err instanceof SettingsMismatchError));
      assert.match(err.message, /size 30 must be a positive multiple of the patch size 8/);
      return true;
    });
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('a dense task: results, head-<task>.safetensors, the feature cache removed; reused when asked again', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-probe-task-dense-'));
  try {
    assert.ok(isDenseTask('segmentation') && !isDenseTask('class'));
    const train = { dataset: new SyntheticDenseDataset({ seed: 3, count: 6, size: 32 }) };
    const test = { dataset: new SyntheticDenseDataset({ seed: 3, count: 2, size: 32, split: 'val' }) };
    const file = join(dir, 'results.json');
    const o = { task: 'segmentation' as const, file, weights: 'm.safetensors', settings: {}, size: 32, steps: 5, progress: false };
    const r = await runProbeTask(model, train, test, o);
    assert.equal(r.reused, false);
    assert.deepEqual(r.settings, { layers: 1, steps: 5, headBatchSize: 4, trainLabelSize: 32, lr: null });
    const saved = JSON.parse(await readFile(file, 'utf8'));
    assert.equal(saved.head, 'head-segmentation.safetensors');
    // The numbers are runDenseProbe's on the same settings (its own tests check them: dense-probe.test.ts).
    const direct = await runDenseProbe(model, train, test, {
      task: 'segmentation',
      size: 32,
      layers: 1,
      steps: 5,
      batchSize: 8,
      headBatchSize: 4,
      trainLabelSize: 32,
      seed: 0,
    });
    assert.deepEqual(saved.segmentation, JSON.parse(JSON.stringify(direct.report.segmentation)));
    assert.deepEqual(saved.baseline, direct.report.baseline);
    const head = await readSafetensors(join(dir, 'head-segmentation.safetensors'));
    assert.deepEqual(head.tensors['conv_seg.weight']!.shape, [6, 64, 1, 1]);
    assert.ok(!existsSync(join(dir, 'cache-segmentation')), 'the feature cache is removed when done');
    assert.equal((await runProbeTask(model, train, test, o)).reused, true);
    await assert.rejects(runProbeTask(model, train, test, { ...o, layers: 4 }), SettingsMismatchError);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('openProbeSource: synthetic train and val streams, an image folder split 80/20 or its train/ and val/', async () => {
  const syn = openProbeSource('synthetic', { count: 10, syntheticSize: 32, seed: 2 });
  assert.deepEqual([syn.train.dataset.length, syn.test.dataset.length, syn.train.indices], [10, 3, undefined]);
  assert.equal((await syn.train.dataset.get(0)).width, 32);
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-probe-source-'));
  try {
    const png = await encodePng(new Uint8Array(8 * 8 * 3).fill(128), 8, 8);
    for (const cls of ['cat', 'dog']) {
      await mkdir(join(dir, 'all', cls), { recursive: true });
      for (let i = 0; i < 5; i++) await writeFile(join(dir, 'all', cls, `${i}.png`), png);
      for (const split of ['train', 'val']) {
        await mkdir(join(dir, 'split', split, cls), { recursive: true });
        await writeFile(join(dir, 'split', split, cls, 'a.png'), png);
      }
    }
    const all = openProbeSource(join(dir, 'all'), { seed: 1 });
    assert.equal(all.train.dataset, all.test.dataset);
    assert.deepEqual([all.train.indices!.length, all.test.indices!.length], [8, 2]);
    assert.deepEqual(
      [...all.train.indices!, ...all.test.indices!].sort((a, b) => a - b),
      [0, 1, 2, 3, 4, 5, 6, 7, 8, 9],
    );
    const split = openProbeSource(join(dir, 'split'));
    assert.deepEqual([split.train.dataset.length, split.test.dataset.length, split.train.dataset.classNames], [2, 2, ['cat', 'dog']]);
    assert.throws(() => openProbeSource(join(dir, 'none')));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
