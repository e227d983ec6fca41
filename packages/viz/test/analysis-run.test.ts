/**
 * analyzeImages (analysis-run.ts) without the CLI: two models side by side on tensor and file inputs, an
 * unreadable file skipped and listed, every figure, stats.json, summary.json and the report's links; a
 * model that cannot take an input is an InputError naming it.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodePng, initBackend, InputError, Rng, SyntheticDataset } from '@vitreg/core';
import { getConfig, TfjsEncoder, VisionTransformer } from '@vitreg/registers';
import { analyzeImages, describeEncoder, imageFileInputs, tensorInputs } from '../src/index.js';

await initBackend('wasm', { log: () => {} });
const a = new TfjsEncoder(new VisionTransformer(getConfig('vit_micro_patch8_reg4'), { seed: 1 }));
const b = new TfjsEncoder(new VisionTransformer(getConfig('vit_micro_patch8'), { seed: 2 }));

test('two models on a tensor and image files: figures, stats, summary, report; a broken file skipped', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-analysis-run-'));
  try {
    const rng = new Rng(0);
    const batch = { data: Float32Array.from({ length: 2 * 32 * 32 * 3 }, () => rng.normal()), shape: [2, 32, 32, 3] };
    const item = await new SyntheticDataset({ seed: 1, count: 1, size: 40 }).get(0);
    await writeFile(join(dir, 'shape.png'), await encodePng(item.image, item.width, item.height));
    await writeFile(join(dir, 'broken.png'), 'not an image');
    const transform = { kind: 'eval', resize: 32, crop: 32 } as const;
    const inputs = [
      ...tensorInputs(batch, { file: 'x.safetensors', name: 'images' }),
      ...imageFileInputs([join(dir, 'shape.png'), join(dir, 'broken.png')], transform),
    ];
    assert.deepEqual(
      inputs.map((i) => i.name),
      ['images-0', 'images-1', 'shape', 'broken'],
    );
    assert.equal(inputs[1].source, 'x.safetensors:images[1]');
    const out = join(dir, 'out');
    const models = [
      { label: 'A', weights: 'a.safetensors', encoder: a },
      { label: 'B', weights: 'b.safetensors', encoder: b, subdir: 'b' },
    ];
    const r = await analyzeImages(models, inputs, out, { transform, settings: { note: 1 }, progress: false });
    assert.equal(r.images, 3);
    assert.deepEqual(
      r.failed.map((f) => f.path),
      [join(dir, 'broken.png')],
    );
    for (const name of ['images-0', 'images-1', 'shape']) {
      assert.ok(existsSync(join(out, name, 'input.png')));
      for (const sub of ['', 'b']) {
        for (const f of ['norms', 'attention', 'pca', 'histogram', 'layers']) {
          assert.ok(existsSync(join(out, name, sub, `${f}.png`)), `${name}/${sub}/${f}`);
        }
        const stats = JSON.parse(await readFile(join(out, name, sub, 'stats.json'), 'utf8'));
        assert.deepEqual([stats.image, stats.model, stats.grid, stats.registers.length], [name, sub ? 'B' : 'A', [4, 4], sub ? 0 : 4]);
      }
      assert.ok(existsSync(join(out, name, 'registers.png')) && !existsSync(join(out, name, 'b', 'registers.png')));
    }
    const summary = JSON.parse(await readFile(r.summary, 'utf8'));
    assert.deepEqual(summary.settings, { note: 1, threshold: 'auto', source: 'postnorm', transform, pcaForeground: null });
    const engines = summary.models.map((m: { label: string; engine: string }) => [m.label, m.engine]);
    assert.deepEqual(engines, [
      ['A', 'tfjs wasm'],
      ['B', 'tfjs wasm'],
    ]);
    const perImage = summary.images.map((i: { name: string; models: unknown[] }) => [i.name, i.models.length]);
    assert.deepEqual(perImage, [
      ['images-0', 2],
      ['images-1', 2],
      ['shape', 2],
    ]);
    assert.equal(summary.failed.length, 1);
    // every block's outlier share over the 3 images pooled, per model: its largest norm is the largest
    // of the images' own per-block maxima (stats.json)
    assert.deepEqual(
      summary.layerOutliers.map((m: { label: string }) => m.label),
      ['A', 'B'],
    );
    for (const [k, sub] of ['', 'b'].entries()) {
      const depth = models[k].encoder.config.depth;
      assert.equal(r.layerOutliers[k].length, depth);
      const stats = await Promise.all(
        ['images-0', 'images-1', 'shape'].map(async (n) => JSON.parse(await readFile(join(out, n, sub, 'stats.json'), 'utf8'))),
      );
      for (let l = 0; l < depth; l++) {
        const pooled = summary.layerOutliers[k].layers[l];
        assert.deepEqual([pooled.layer, pooled.tokens], [l, 3 * 16]);
        assert.equal(pooled.share, pooled.outliers / pooled.tokens);
        assert.equal(pooled.max, Math.max(...stats.map((st) => st.layers[l].max)));
      }
    }
    const html = await readFile(r.report, 'utf8');
    const links = [...html.matchAll(/src="([^"]+)"/g)].map((m) => decodeURIComponent(m[1]));
    assert.equal(links.length, 3 * 12, 'per image: input, 6 figures of A, 5 of B');
    for (const l of links) assert.ok(existsSync(join(out, l)), l);
    assert.ok(html.includes(describeEncoder(a)) && html.includes('broken.png'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('an input the model cannot take is an InputError naming it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-analysis-bad-'));
  try {
    const batch = { data: new Float32Array(30 * 30 * 3), shape: [1, 30, 30, 3] };
    await assert.rejects(
      analyzeImages([{ label: 'A', weights: 'a', encoder: a }], tensorInputs(batch, { file: 'f.safetensors', name: 't' }), dir, {
        transform: 'tensor as is',
        progress: false,
      }),
      (err: Error) => err instanceof InputError && /^f\.safetensors:t\[0\]: images: height and width must be positive/.test(err.message),
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
