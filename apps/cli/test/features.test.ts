/** `vitreg features` and `vitreg convert` end to end against the DINOv2 reference outputs. */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import sharp from 'sharp';
import { readSafetensors, toFloat32 } from '@vitreg/core';
import { FIXTURES, lastLine, vitreg } from './helpers.ts';

let dir: string;
const REF = join(FIXTURES, 'reg4.reference.safetensors');
const HEADS = '{"num_heads": 3}';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vitreg-features-'));
});
after(async () => rm(dir, { recursive: true, force: true }));

function allclose(a: Float32Array, b: Float32Array, atol = 1e-4, rtol = 1e-4): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (!(Math.abs(a[i] - b[i]) <= atol + rtol * Math.abs(b[i]))) return false;
  return true;
}

test('features on a reference tensor reproduce every DINOv2 output (.pth weights)', async () => {
  const out = join(dir, 'f.safetensors');
  const r = await vitreg([
    'features',
    '--weights',
    join(FIXTURES, 'reg4.dinov2.pth'),
    '--config',
    HEADS,
    '--tensor',
    `${REF}:sq224.input_nhwc`,
    '--out',
    out,
    '--attention',
    'last',
    '--layers',
    'all',
    '--batch-size',
    '1',
  ]);
  assert.equal(r.code, 0, r.stderr);
  const [{ tensors: got, metadata }, { tensors: ref }] = await Promise.all([readSafetensors(out), readSafetensors(REF)]);
  assert.deepEqual(got.cls.shape, [2, 96]);
  assert.deepEqual(got.registers.shape, [2, 4, 96]);
  assert.deepEqual(got.patches.shape, [2, 256, 96]);
  assert.deepEqual(got.prenorm.shape, [2, 261, 96]);
  assert.deepEqual(got.attention.shape, [2, 3, 261, 261]);
  for (const [mine, theirs] of [
    ['cls', 'cls'],
    ['registers', 'registers'],
    ['patches', 'patches'],
    ['prenorm', 'prenorm'],
    ['attention', 'last_attn'],
  ]) {
    assert.ok(allclose(toFloat32(got[mine]), toFloat32(ref[`sq224.${theirs}`])), mine);
  }
  // layerK.prenorm holds all tokens; the reference stores the patch part.
  const layer1 = toFloat32(got['layer1.prenorm']);
  const patches1 = new Float32Array(2 * 256 * 96);
  for (let b = 0; b < 2; b++) patches1.set(layer1.subarray((b * 261 + 5) * 96, (b + 1) * 261 * 96), b * 256 * 96);
  assert.ok(allclose(patches1, toFloat32(ref['sq224.layer1.patches_prenorm'])));
  assert.deepEqual(JSON.parse(metadata.vitreg_grid), [16, 16]);
  assert.equal(JSON.parse(metadata.vitreg_images).length, 2);
});

test('convert to timm BF16 and hf, then features still match within the rounding', async () => {
  const timm = join(dir, 'w.timm.bf16.safetensors');
  const hf = join(dir, 'w.hf.safetensors');
  let r = await vitreg([
    'convert',
    join(FIXTURES, 'reg4.dinov2.safetensors'),
    '--config',
    HEADS,
    '--to',
    'timm',
    '--dtype',
    'bf16',
    '--out',
    timm,
  ]);
  assert.equal(r.code, 0, r.stderr);
  r = await vitreg(['convert', timm, '--to', 'hf', '--out', hf]);
  assert.equal(r.code, 0, r.stderr);
  const { tensors } = await readSafetensors(hf);
  assert.ok(tensors['encoder.layer.0.attention.attention.query.weight']);
  const out = join(dir, 'hf.safetensors');
  r = await vitreg(['features', '--weights', hf, '--tensor', `${REF}:rect98x140.input_nhwc`, '--out', out]);
  assert.equal(r.code, 0, r.stderr);
  const got = toFloat32((await readSafetensors(out)).tensors.patches);
  const want = toFloat32((await readSafetensors(REF)).tensors['rect98x140.patches']);
  assert.ok(allclose(got, want, 0.15, 0.15), 'BF16 weights stay near the F32 outputs');
  assert.ok(!allclose(got, want, 1e-6, 0), 'BF16 rounding changes the outputs a little');
});

test('features on image files: evaluation transform, shapes, and equal sizes enforced', async () => {
  const a = join(dir, 'a.png');
  const b = join(dir, 'b.jpg');
  await sharp({ create: { width: 300, height: 200, channels: 3, background: { r: 200, g: 30, b: 40 } } })
    .png()
    .toFile(a);
  await sharp({ create: { width: 120, height: 160, channels: 4, background: { r: 10, g: 90, b: 240, alpha: 0.5 } } })
    .jpeg()
    .toFile(b);
  const out = join(dir, 'img.safetensors');
  const r = await vitreg([
    'features',
    '--weights',
    join(FIXTURES, 'reg4_swiglu.dinov2.safetensors'),
    '--config',
    HEADS,
    a,
    b,
    '--size',
    '112',
    '--out',
    out,
  ]);
  assert.equal(r.code, 0, r.stderr);
  const { tensors } = await readSafetensors(out);
  assert.deepEqual(tensors.patches.shape, [2, 64, 96]);
  const keep = await vitreg([
    'features',
    '--weights',
    join(FIXTURES, 'reg4.dinov2.safetensors'),
    '--config',
    HEADS,
    a,
    b,
    '--keep-aspect',
    '--out',
    join(dir, 'k.safetensors'),
  ]);
  assert.equal(keep.code, 2);
  assert.match(lastLine(keep.stderr), /b\.jpg: becomes .* but .*a\.png became/);
});

test('bad inputs: one line on stderr, non-zero exit', async () => {
  const w = join(FIXTURES, 'reg4.dinov2.safetensors');
  const broken = join(dir, 'broken.safetensors');
  await writeFile(broken, Buffer.from([1, 2, 3]));
  const cases: [string[], RegExp][] = [
    [['features', '--weights', w, '--config', HEADS, '--tensor', REF, '--out', join(dir, 'x.safetensors')], /holds \d+ tensors; name one/],
    [
      ['features', '--weights', w, '--config', HEADS, '--tensor', `${REF}:sq224.cls`, '--out', join(dir, 'x.safetensors')],
      /sq224\.cls: expected an NHWC image batch/,
    ],
    [['features', '--weights', w, '--tensor', `${REF}:sq224.input_nhwc`, '--out', join(dir, 'x.safetensors')], /cannot infer num_heads/],
    [
      ['features', '--weights', w, '--config', '{"heads": 3}', '--tensor', `${REF}:sq224.input_nhwc`, '--out', join(dir, 'x.safetensors')],
      /unknown field "heads"/,
    ],
    [['features', '--weights', broken, '--tensor', `${REF}:sq224.input_nhwc`, '--out', join(dir, 'x.safetensors')], /broken\.safetensors/],
    [
      [
        'features',
        '--weights',
        w,
        '--config',
        HEADS,
        '--tensor',
        `${REF}:sq224.input_nhwc`,
        '--out',
        join(dir, 'x.safetensors'),
        '--attention',
        'some',
      ],
      /--attention: expected one of none, last, all/,
    ],
    [['features', '--weights', w, '--config', HEADS, join(dir, 'missing.png'), '--out', join(dir, 'x.safetensors')], /missing\.png/],
    [['features', '--weights', w, '--config', HEADS, '--tensor', `${REF}:sq224.input_nhwc`], /--out OUT\.safetensors is required/],
    [['convert', w, '--to', 'keras', '--out', join(dir, 'y.safetensors')], /--to: expected one of dinov2, timm, hf/],
    [['convert', join(dir, 'nope.pth'), '--to', 'timm', '--out', join(dir, 'y.safetensors')], /nope\.pth does not exist/],
    [['features', '--wieghts', w], /Unknown option '--wieghts'/],
  ];
  const results = await Promise.all(cases.map(([args]) => vitreg(args)));
  results.forEach((r, i) => {
    assert.notEqual(r.code, 0, cases[i][0].join(' '));
    assert.equal(
      r.stderr
        .trim()
        .split('\n')
        .filter((l) => l.startsWith('vitreg')).length,
      1,
      r.stderr,
    );
    assert.match(lastLine(r.stderr), cases[i][1]);
  });
  const help = await vitreg(['features', '--help']);
  assert.equal(help.code, 0);
  assert.match(help.stdout, /Usage: vitreg features/);
});
