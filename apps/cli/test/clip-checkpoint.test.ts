/**
 * `vitreg analyze`, `discover` and `export` on a whole CLIP checkpoint (both towers, open_clip's names, as
 * saveClip and `vitreg train --preset tiny-clip` write it): each reads the image tower of the file and gives what
 * the same tower saved alone (saveWeights) gives: analyze's token norms, discover's boxes, export's ONNX file.
 * A tiny model (ViT-micro/8 with 2 registers at 32 px, a 1-block text tower); four CLI processes at once:
 * 9 CPU-seconds, most of it start-up (31 s wall at load average 10-15 on the 2 shared cores).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fromFloat32, initBackend, writeSafetensors } from '@vitreg/core';
import { ClipModel, getConfig, saveClip, saveWeights, validateClipConfig } from '@vitreg/registers';
import { vitreg } from './helpers.ts';

const tmp = await mkdtemp(join(tmpdir(), 'vitreg-clip-ckpt-'));
test.after(() => rm(tmp, { recursive: true, force: true }));
const whole = join(tmp, 'clip.safetensors');
const tower = join(tmp, 'tower.safetensors');
const input = join(tmp, 'input.safetensors');
await initBackend('wasm', { log: () => {} });
const model = new ClipModel(
  validateClipConfig({
    vision: getConfig('vit_micro_patch8', { proj_dim: 16, num_register_tokens: 2, img_size: 32 }),
    text: { context_length: 16, vocab_size: 64, width: 32, heads: 2, layers: 1, proj_dim: 16 },
  }),
  { seed: 3 },
);
await saveClip(model, whole);
await saveWeights(model.visual, tower);
model.dispose();
// Two 32x32 images with a bright square on a dark ground (NHWC, ImageNet-normalised range).
const pixels = new Float32Array(2 * 32 * 32 * 3).map((_, i) => {
  const [b, y, x] = [Math.floor(i / 3072), Math.floor((i % 3072) / 96), Math.floor((i % 96) / 3)];
  return (y >= 8 + 4 * b && y < 20 + 4 * b && x >= 10 && x < 24 ? 1.5 : -1) + 0.1 * Math.sin(i);
});
await writeSafetensors(input, { x: fromFloat32(pixels, [2, 32, 32, 3], 'F32') });
const tensor = `${input}:x`;

test('analyze, discover and export read the image tower of a whole CLIP checkpoint as the tower alone', async () => {
  const [an, di, exWhole, exTower] = await Promise.all([
    vitreg(['analyze', '--tensor', tensor, '--weights', whole, '--weights-b', tower, '--backend', 'wasm', '--out', join(tmp, 'analyze')]),
    vitreg(['discover', '--weights', whole, '--weights', tower, '--tensor', tensor, '--backend', 'wasm', '--out', join(tmp, 'discover')]),
    vitreg(['export', '--weights', whole, '--size', '32', '--out', join(tmp, 'whole.onnx')]),
    vitreg(['export', '--weights', tower, '--size', '32', '--out', join(tmp, 'tower.onnx')]),
  ]);
  for (const [name, r] of Object.entries({ analyze: an, discover: di, 'export (whole)': exWhole, 'export (tower)': exTower }))
    assert.equal(r.code, 0, `${name}: ${r.stderr}`);
  // analyze: the whole file (--weights) and the tower alone (--weights-b) side by side, per image.
  for (const b of [0, 1]) {
    const a = JSON.parse(await readFile(join(tmp, 'analyze', `x-${b}`, 'stats.json'), 'utf8'));
    const t = JSON.parse(await readFile(join(tmp, 'analyze', `x-${b}`, 'b', 'stats.json'), 'utf8'));
    assert.equal(a.config.num_register_tokens, 2);
    assert.deepEqual(a.config, t.config, `image ${b}: config`);
    assert.deepEqual(a.norms, t.norms, `image ${b}: token norms`);
  }
  // discover: one box per image, the same from both files.
  const boxes = async (dir: string) =>
    (await readFile(join(tmp, 'discover', dir, 'results.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { box: number[]; seed: number });
  const [fromWhole, fromTower] = [await boxes('clip'), await boxes('tower')];
  assert.equal(fromWhole.length, 2);
  assert.deepEqual(
    fromWhole.map((r) => [r.box, r.seed]),
    fromTower.map((r) => [r.box, r.seed]),
  );
  // export: the same ONNX file, byte for byte.
  assert.match(exWhole.stderr, /wrote .*whole\.onnx \(32x32, fp32\)/);
  assert.ok(
    (await readFile(join(tmp, 'whole.onnx'))).equals(await readFile(join(tmp, 'tower.onnx'))),
    'export: whole.onnx differs from tower.onnx',
  );
});
