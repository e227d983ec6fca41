import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodeLabelPng, encodePng, encodeUint16Png, readSafetensors, SyntheticDataset } from '@vitreg/core';
import { FIXTURES, lastLine, vitreg } from './helpers.js';

const reg4 = join(FIXTURES, 'reg4.dinov2.safetensors');
const reg0 = join(FIXTURES, 'reg0.dinov2.safetensors');
const tmp = await mkdtemp(join(tmpdir(), 'vitreg-probe-dense-'));
test.after(() => rm(tmp, { recursive: true, force: true }));
/** mmseg's mIoU: the mean over the classes with an IoU (null: a class in neither the labels nor the predictions). */
const nanMean = (v: (number | null)[]) => {
  const ok = v.filter((x): x is number => x !== null);
  return ok.reduce((a, b) => a + b, 0) / ok.length;
};
const common = ['--config', '{"num_heads":3}', '--synthetic-size', '56', '--size', '56', '--steps', '20', '--backend', 'wasm'];

test('probe --task segmentation,depth on the synthetic dense set: results, heads, resume, other settings refused', async () => {
  const out = join(tmp, 'both');
  const args = [
    'probe',
    '--weights',
    reg4,
    ...common,
    '--data',
    'synthetic',
    '--count',
    '8',
    '--test-count',
    '3',
    '--task',
    'segmentation,depth',
    '--out',
    out,
  ];
  const r = await vitreg(args);
  assert.equal(r.code, 0, r.stderr);
  const seg = JSON.parse(await readFile(join(out, 'results-segmentation.json'), 'utf8'));
  assert.deepEqual([seg.task, seg.train, seg.test, seg.grid, seg.blocks, seg.featureDim], ['segmentation', 8, 3, [4, 4], [1], 96]);
  assert.deepEqual(seg.segmentation.classNames, ['background', 'circle', 'square', 'triangle', 'cross', 'ring']);
  // The scores themselves are runDenseProbe's (probe-task.test.ts: runProbeTask saves runDenseProbe's; dense-eval.test.ts
  // and dense-probe.test.ts check them against naive computations and known answers); here: mIoU is the mean of the IoUs saved.
  assert.ok(Math.abs(seg.segmentation.miou - nanMean(seg.segmentation.iou)) <= 1e-12, `mIoU ${seg.segmentation.miou}`);
  assert.equal(seg.settings.steps, 20);
  const depth = JSON.parse(await readFile(join(out, 'results-depth.json'), 'utf8'));
  assert.equal(depth.featureDim, 192, 'patch + CLS');
  // Ranges only: the depth numbers are runDenseProbe's, checked in dense-eval.test.ts (naive RMSE / delta1) and dense-probe.test.ts.
  assert.ok(depth.depth.rmse > 0 && depth.depth.delta1 >= 0 && depth.depth.delta1 <= 1 && depth.baseline.rmse > 0);
  assert.match(r.stderr, /segmentation: mIoU [\d.]+%, pixel accuracy/);
  assert.match(r.stderr, /depth: RMSE [\d.]+ m, delta<1\.25 [\d.]+%/);
  const head = (await readSafetensors(join(out, 'head-depth.safetensors'))).tensors;
  assert.deepEqual(head['conv_depth.weight'].shape, [256, 192, 1, 1]);
  assert.deepEqual((await readSafetensors(join(out, 'head-segmentation.safetensors'))).tensors['conv_seg.weight'].shape, [6, 96, 1, 1]);
  assert.equal(existsSync(join(out, 'cache-depth')), false, 'the feature cache is removed when done');

  // the same command again: both tasks already done, files untouched
  const before = (await stat(join(out, 'results-depth.json'))).mtimeMs;
  const again = await vitreg(args);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, /segmentation: already done/);
  assert.match(again.stderr, /depth: already done/);
  assert.equal((await stat(join(out, 'results-depth.json'))).mtimeMs, before);
  const other = await vitreg(args.map((a) => (a === '20' ? '30' : a)));
  assert.equal(other.code, 2);
  assert.match(lastLine(other.stderr), /results-segmentation\.json holds the results of a run with other settings \(steps 20, not 30\)/);
});

test('probe sweep: class, segmentation and depth columns side by side (Table 2)', async () => {
  const out = join(tmp, 'table2');
  const r = await vitreg([
    'probe',
    '--weights',
    reg4,
    '--weights',
    reg0,
    ...common,
    '--data',
    'synthetic',
    '--count',
    '6',
    '--test-count',
    '2',
    '--task',
    'class,segmentation,depth',
    '--token',
    'cls+mean',
    '--out',
    out,
  ]);
  assert.equal(r.code, 0, r.stderr);
  const csv = (await readFile(join(out, 'sweep.csv'), 'utf8')).trim().split('\n');
  assert.equal(csv[0], 'checkpoint,registers,accuracy,knn_top1,miou,pixel_accuracy,rmse,delta1,abs_rel');
  assert.equal(csv.length, 3);
  const sweep = JSON.parse(await readFile(join(out, 'sweep.json'), 'utf8'));
  assert.deepEqual(sweep.metrics, ['accuracy', 'knn_top1', 'miou', 'rmse']);
  assert.ok(existsSync(join(out, 'reg0.dinov2', 'results-class.json')));
  assert.ok(existsSync(join(out, 'reg4.dinov2', 'head-segmentation.safetensors')));
});

test('probe on ADE20k and NYU folders (official layouts), and dense errors', async () => {
  // ADE20k: 4 training and 2 validation images with annotations 0 (ignored) .. 150
  const ade = join(tmp, 'ADEChallengeData2016');
  const shapes = new SyntheticDataset({ seed: 4, count: 6, size: 28 });
  for (const [split, n, prefix] of [
    ['training', 4, 'ADE_train'],
    ['validation', 2, 'ADE_val'],
  ] as const) {
    await mkdir(join(ade, 'images', split), { recursive: true });
    await mkdir(join(ade, 'annotations', split), { recursive: true });
    for (let i = 0; i < n; i++) {
      const stem = `${prefix}_0000000${i + 1}`;
      await writeFile(join(ade, 'images', split, `${stem}.png`), await encodePng((await shapes.get(i)).image, 28, 28));
      await writeFile(
        join(ade, 'annotations', split, `${stem}.png`),
        await encodeLabelPng(
          Uint8Array.from({ length: 28 * 28 }, (_, k) => (k * 7 + i) % 151),
          28,
          28,
        ),
      );
    }
  }
  // NYU: split files with depth in millimetres
  const nyu = join(tmp, 'nyu');
  await mkdir(join(nyu, 'office_0001'), { recursive: true });
  const lines: Record<string, string[]> = { train: [], test: [] };
  for (let i = 0; i < 5; i++) {
    await writeFile(join(nyu, 'office_0001', `rgb_0000${i}.jpg`), await encodePng((await shapes.get(i)).image, 28, 28));
    await writeFile(
      join(nyu, 'office_0001', `sync_depth_0000${i}.png`),
      await encodeUint16Png(
        Uint16Array.from({ length: 28 * 28 }, (_, k) => 1000 + 30 * (k % 97)),
        28,
        28,
      ),
    );
    lines[i < 3 ? 'train' : 'test'].push(`/office_0001/rgb_0000${i}.jpg /office_0001/sync_depth_0000${i}.png 518.8579`);
  }
  await writeFile(join(nyu, 'nyu_train.txt'), lines.train.join('\n') + '\n');
  await writeFile(join(nyu, 'nyu_test.txt'), lines.test.join('\n') + '\n');

  const flags = ['--weights', reg4, '--config', '{"num_heads":3}', '--size', '28', '--steps', '5', '--backend', 'wasm'];
  const [s, d, mismatch, layers] = await Promise.all([
    vitreg(['probe', ...flags, '--task', 'segmentation', '--data', ade, '--count', '3', '--out', join(tmp, 'ade-out')]),
    vitreg(['probe', ...flags, '--task', 'depth', '--data', `nyu:${nyu}`, '--out', join(tmp, 'nyu-out')]),
    vitreg(['probe', ...flags, '--task', 'depth', '--data', ade, '--out', join(tmp, 'bad')]),
    vitreg([
      'probe',
      ...flags,
      '--task',
      'segmentation',
      '--layers',
      '4',
      '--data',
      'synthetic',
      '--count',
      '2',
      '--out',
      join(tmp, 'bad4'),
    ]),
  ]);
  assert.equal(s.code, 0, s.stderr);
  const seg = JSON.parse(await readFile(join(tmp, 'ade-out', 'results.json'), 'utf8'));
  assert.deepEqual([seg.train, seg.test, seg.segmentation.classNames.length, seg.segmentation.iou.length], [3, 2, 150, 150]);
  assert.ok(Math.abs(seg.segmentation.miou - nanMean(seg.segmentation.iou)) <= 1e-12, `mIoU ${seg.segmentation.miou}`);
  assert.equal(d.code, 0, d.stderr);
  const dep = JSON.parse(await readFile(join(tmp, 'nyu-out', 'results.json'), 'utf8'));
  assert.deepEqual([dep.train, dep.test, dep.depth.images], [3, 2, 2]);
  assert.equal(mismatch.code, 2);
  assert.match(lastLine(mismatch.stderr), /ADE20k has segmentation targets, not depth/);
  assert.equal(layers.code, 2);
  assert.match(lastLine(layers.stderr), /4 layers need a model of at least 4 blocks, this one has 2/);

  const [noData, badTask] = await Promise.all([
    vitreg(['probe', ...flags, '--task', 'class,depth', '--data', 'depth=synthetic', '--out', join(tmp, 'bad')]),
    vitreg(['probe', ...flags, '--task', 'segmentation,depht', '--data', 'synthetic', '--out', join(tmp, 'bad')]),
  ]);
  assert.match(lastLine(noData.stderr), /--data: no data for task class; give --data class=SRC or one --data SRC for every task/);
  assert.match(lastLine(badTask.stderr), /--task: expected one of class, position, pixels, segmentation, depth, zeroshot .* got "depht"/);
});
