import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeImage, encodePng, SyntheticDataset } from '@vitreg/core';
import { nodeArgsOf } from './helpers.ts';

const here = dirname(fileURLToPath(import.meta.url));
const main = resolve(here, '../src/main.ts');
const fixtures = resolve(here, '../../../packages/registers/test/fixtures/dinov2-parity');
const reg4 = join(fixtures, 'reg4.dinov2.safetensors');
const reg0 = join(fixtures, 'reg0.dinov2.safetensors');

function vitreg(...args: string[]) {
  const r = spawnSync(process.execPath, [...nodeArgsOf(main), ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const tmp = await mkdtemp(join(tmpdir(), 'vitreg-probe-'));
test.after(() => rm(tmp, { recursive: true, force: true }));
const common = [
  '--config',
  '{"num_heads":3}',
  '--data',
  'synthetic',
  '--count',
  '16',
  '--test-count',
  '6',
  '--synthetic-size',
  '56',
  '--size',
  '56',
  '--steps',
  '40',
  '--backend',
  'wasm',
];

test('probe class/cls+mean writes results.json with accuracy and k-NN', async () => {
  const out = join(tmp, 'class');
  const r = vitreg('probe', '--weights', reg4, ...common, '--task', 'class', '--token', 'cls+mean', '--out', out);
  assert.equal(r.code, 0, r.stderr);
  const res = JSON.parse(await readFile(join(out, 'results.json'), 'utf8'));
  assert.equal(res.task, 'class');
  assert.equal(res.token, 'cls+mean');
  assert.equal(res.featureDim, 192);
  assert.deepEqual([res.train, res.test, res.grid], [16, 6, [4, 4]]);
  assert.ok(res.accuracy >= 0 && res.accuracy <= 1 && res.knn.top1 >= 0 && res.knn.top1 <= 1);
  assert.equal(res.sweep.length, 4);
  assert.match(r.stderr, /accuracy [\d.]+%/);
});

test('probe sweep over two checkpoints: pixels task, table and plot', async () => {
  const out = join(tmp, 'sweep');
  const r = vitreg('probe', '--weights', reg4, '--weights', reg0, ...common, '--task', 'pixels', '--token', 'outlier', '--out', out);
  assert.equal(r.code, 0, r.stderr);
  const csv = (await readFile(join(out, 'sweep.csv'), 'utf8')).trim().split('\n');
  assert.equal(csv[0], 'checkpoint,registers,mse,l2');
  assert.equal(csv.length, 3);
  assert.match(csv[1], /,4,/);
  assert.match(csv[2], /,0,/);
  const res0 = JSON.parse(await readFile(join(out, 'reg0.dinov2', 'results.json'), 'utf8'));
  assert.ok(res0.mse > 0 && res0.l2 > 0 && typeof res0.outlierFallbacks === 'number');
  const png = await decodeImage(join(out, 'sweep.png'));
  assert.equal(png.width, 640);
});

test('probe on an image folder splits it 80/20 and probes patch positions', async () => {
  const root = join(tmp, 'folder');
  const data = new SyntheticDataset({ seed: 9, count: 10, size: 28 });
  for (let i = 0; i < 10; i++) {
    const dir = join(root, i % 2 ? 'odd' : 'even');
    await mkdir(dir, { recursive: true });
    await writeFile(join(dir, `${i}.png`), await encodePng((await data.get(i)).image, 28, 28));
  }
  const out = join(tmp, 'position');
  const r = vitreg(
    'probe',
    '--weights',
    reg4,
    '--config',
    '{"num_heads":3}',
    '--data',
    root,
    '--size',
    '28',
    '--steps',
    '20',
    '--task',
    'position',
    '--token',
    'normal',
    '--backend',
    'wasm',
    '--out',
    out,
  );
  assert.equal(r.code, 0, r.stderr);
  const res = JSON.parse(await readFile(join(out, 'results.json'), 'utf8'));
  assert.deepEqual([res.train, res.test, res.grid, res.chance], [8, 2, [2, 2], 0.25]);
  assert.ok(res.top1 >= 0 && res.top1 <= 1 && res.meanDistance >= 0 && res.meanDistance <= Math.SQRT2);
});

test('probe rejects a token the task cannot read, and bad flags, with exit 2', () => {
  const r = vitreg('probe', '--weights', reg4, ...common, '--task', 'position', '--token', 'cls', '--out', join(tmp, 'bad'));
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--token: task position reads one patch token/);
  const t = vitreg('probe', '--weights', reg4, ...common, '--task', 'colour', '--out', join(tmp, 'bad'));
  assert.equal(t.code, 2);
  assert.match(t.stderr, /--task: expected one of class, position, pixels, segmentation, depth/);
  const w = vitreg('probe', '--weights', join(tmp, 'missing.safetensors'), ...common, '--out', join(tmp, 'bad'));
  assert.equal(w.code, 2);
  assert.match(w.stderr, /missing.safetensors does not exist/);
});
