import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import sharp from 'sharp';
import { readSafetensors, toFloat32 } from '@vitreg/core';
import { nodeArgsOf } from './helpers.ts';

const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const MAIN = join(ROOT, 'apps/cli/src/main.ts');
const FIX = join(ROOT, 'packages/registers/test/fixtures/dinov2-parity');
const MODEL = ['--weights', join(FIX, 'reg4.dinov2.safetensors'), '--config', '{"num_heads":3}', '--backend', 'wasm'];

function vitreg(args: string[]) {
  const r = spawnSync(process.execPath, [...nodeArgsOf(MAIN), 'analyze', ...args], {
    cwd: ROOT,
    encoding: 'utf8',
    timeout: 120_000,
  });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

/** Decode a PNG; check its size when given and that it is not one flat colour. */
async function checkPng(path: string, size?: [number, number]): Promise<void> {
  const { data, info } = await sharp(path).raw().toBuffer({ resolveWithObject: true });
  if (size) assert.deepEqual([info.width, info.height], size, path);
  const colours = new Set<number>();
  for (let i = 0; i < data.length; i += info.channels) colours.add((data[i] << 16) | (data[i + 1] << 8) | data[i + 2]);
  assert.ok(colours.size > 2, `${path}: only ${colours.size} colours`);
}

/** Float64 row norms of a reference tensor [..., D]. */
function norms(data: Float32Array, d: number): number[] {
  return Array.from({ length: data.length / d }, (_, i) => Math.hypot(...data.subarray(i * d, (i + 1) * d)));
}

test('analyze: a folder and a glob, A/B models, a broken file skipped and named', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'analyze-'));
  try {
    for (const [name, w, h] of [
      ['one', 80, 60],
      ['two', 50, 70],
    ] as const) {
      const px = Buffer.alloc(w * h * 3);
      for (let i = 0; i < w * h; i++) {
        const x = i % w;
        const y = Math.floor(i / w);
        px[i * 3] = (x * 5) & 255;
        px[i * 3 + 1] = (y * 7) & 255;
        px[i * 3 + 2] = x > w / 2 ? 200 : 30;
      }
      await sharp(px, { raw: { width: w, height: h, channels: 3 } })
        .png()
        .toFile(join(dir, `${name}.png`));
    }
    await writeFile(join(dir, 'broken.png'), 'this is not an image');
    const out = join(dir, 'out');
    // A folder (one.png, two.png and broken.png inside) and a glob naming one of them again.
    // The tfjs engine here; the reference check below runs on the default (onnxruntime where it loads).
    const r = vitreg([
      dir,
      join(dir, 'tw*.png'),
      ...MODEL,
      '--engine',
      'tfjs',
      '--weights-b',
      join(FIX, 'reg0.dinov2.safetensors'),
      '--size',
      '56',
      '--out',
      out,
    ]);
    assert.equal(r.code, 1, r.stderr);
    assert.match(r.stderr, /skipped 1 unreadable input: .*broken\.png/);
    for (const name of ['one', 'two']) {
      await checkPng(join(out, name, 'input.png'), [56, 56]);
      for (const sub of ['', 'b']) {
        for (const f of ['norms', 'attention', 'pca', 'histogram', 'layers']) await checkPng(join(out, name, sub, `${f}.png`));
        const stats = JSON.parse(await readFile(join(out, name, sub, 'stats.json'), 'utf8'));
        assert.deepEqual(stats.grid, [4, 4]);
        assert.equal(stats.norms.patches.postnorm.length, 16);
        assert.equal(stats.layers.length, 2);
        assert.equal(stats.outliers.positions.length, stats.outliers.count);
        assert.equal(stats.registers.length, sub === '' ? 4 : 0);
      }
      await checkPng(join(out, name, 'registers.png'));
      assert.ok(!existsSync(join(out, name, 'b', 'registers.png')), 'model B has no registers');
    }
    const summary = JSON.parse(await readFile(join(out, 'summary.json'), 'utf8'));
    assert.deepEqual(
      summary.images.map((i: { name: string }) => i.name),
      ['one', 'two'],
    );
    assert.equal(summary.images[0].models.length, 2);
    const statsA = JSON.parse(await readFile(join(out, 'one', 'stats.json'), 'utf8'));
    assert.equal(summary.images[0].models[0].outliers, statsA.outliers.count);
    assert.equal(summary.images[0].models[0].maxNorm, Math.max(...statsA.norms.patches.postnorm));
    assert.equal(summary.failed.length, 1);
    assert.match(summary.failed[0].path, /broken\.png$/);
    // every block's automatic outlier share over both images pooled, per model, printed and in summary.json
    for (const [k, label] of ['A', 'B'].entries()) {
      const m = summary.layerOutliers[k];
      assert.deepEqual([m.label, m.layers.length, m.layers[0].tokens], [label, 2, 2 * 16]);
      const shares = m.layers.map((l: { share: number }) => `${(100 * l.share).toFixed(1)}%`).join(' ');
      assert.ok(r.stderr.includes(`${label}: automatic outlier share per block (32 patch tokens pooled each): ${shares}`), r.stderr);
    }
    const html = await readFile(join(out, 'report.html'), 'utf8');
    const links = [...html.matchAll(/src="([^"]+)"/g)].map((m) => decodeURIComponent(m[1]));
    assert.equal(links.length, 2 * 12, 'per image: input, 6 figures of A, 5 of B (no registers)');
    for (const l of links) assert.ok(existsSync(join(out, l)), `report links a missing file ${l}`);
    assert.match(html, /broken\.png/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('analyze --tensor: numbers match the reference tensors', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'analyze-t-'));
  try {
    const ref = (await readSafetensors(join(FIX, 'reg4.reference.safetensors'))).tensors;
    const d = 96;
    const p = 256;
    const patchNorms = norms(toFloat32(ref['sq224.patches']), d);
    const preNorms = norms(toFloat32(ref['sq224.prenorm']), d);
    // A fixed threshold halfway between two reference norms of image 0, away from any rounding.
    const sorted = patchNorms.slice(0, p).sort((a, b) => a - b);
    const threshold = (sorted[p - 20] + sorted[p - 21]) / 2;
    const want = patchNorms
      .slice(0, p)
      .map((v, i) => [v, i])
      .filter(([v]) => v > threshold)
      .map(([, i]) => i);
    const out = join(dir, 'out');
    const r = vitreg([
      '--tensor',
      `${join(FIX, 'reg4.reference.safetensors')}:sq224.input_nhwc`,
      ...MODEL,
      '--threshold',
      String(threshold),
      '--out',
      out,
    ]);
    assert.equal(r.code, 0, r.stderr);
    for (let b = 0; b < 2; b++) {
      const stats = JSON.parse(await readFile(join(out, `sq224.input_nhwc-${b}`, 'stats.json'), 'utf8'));
      assert.deepEqual(stats.grid, [16, 16]);
      const close = (a: number, e: number, what: string) =>
        assert.ok(Math.abs(a - e) <= 1e-3 + 2e-4 * Math.abs(e), `${what}: ${a} vs ${e}`);
      for (let i = 0; i < p; i++) {
        close(stats.norms.patches.postnorm[i], patchNorms[b * p + i], `image ${b} patch ${i} postnorm`);
        close(stats.norms.patches.prenorm[i], preNorms[b * 261 + 5 + i], `image ${b} patch ${i} prenorm`);
      }
      close(stats.norms.cls.prenorm, preNorms[b * 261], 'cls prenorm');
      if (b === 0) {
        assert.equal(stats.outliers.method, 'fixed');
        assert.deepEqual(stats.outliers.indices, want);
        assert.deepEqual(
          stats.outliers.positions,
          want.map((i) => [Math.floor(i / 16), i % 16]),
        );
      }
      await checkPng(join(out, `sq224.input_nhwc-${b}`, 'norms.png'));
    }
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('analyze: bad flags are one-line errors', () => {
  let r = vitreg(['x.png', '--out', '/tmp/never']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--weights FILE is required/);
  r = vitreg(['--tensor', 'nope.safetensors', ...MODEL, '--out', '/tmp/never']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--tensor: nope.safetensors does not exist/);
  r = vitreg(['x.png', ...MODEL, '--out', '/tmp/never', '--threshold', 'high']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--threshold: expected a number, got "high"/);
  r = vitreg(['x.png', ...MODEL, '--out', '/tmp/never', '--size', '50']);
  assert.equal(r.code, 2);
  assert.match(r.stderr, /--size: 50 is not a multiple of the patch size 14/);
});
