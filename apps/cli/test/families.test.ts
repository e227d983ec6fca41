/**
 * `vitreg analyze`, `discover` (LOST on keys and on values) and `probe` on every model family: DINO,
 * DeiT-III, OpenCLIP and OpenAI CLIP (the fixtures of packages/registers/test/fixtures/families, whose
 * `sq64` input is the same two images for every family). Token norms and LOST's boxes are compared with
 * what the official PyTorch code's outputs give (the reference files); the probe runs on all four.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensors, toFloat32, writeSafetensors } from '@vitreg/core';
import { affinityHost, lostFromAffinity } from '@vitreg/probe';
import { encodeStateDict, readWeights, type ViTConfig } from '@vitreg/registers';
import { ROOT, vitreg } from './helpers.ts';

const FAMILIES = join(ROOT, 'packages', 'registers', 'test', 'fixtures', 'families');
const INPUT = `${join(FAMILIES, 'dino.reference.safetensors')}:sq64.input_nhwc`;
const [B, D, HEADS, HD, P, GRID, PATCH] = [2, 48, 3, 16, 16, [4, 4] as [number, number], 16];

/** Each family: its official file, the config the tensors cannot tell, its reference. */
const families: { name: string; file: string; config: Partial<ViTConfig>; ref: string }[] = [
  { name: 'dino', file: 'dino.pth', config: {}, ref: 'dino' },
  { name: 'deit3', file: 'deit3.models_v2.pth', config: {}, ref: 'deit3' },
  { name: 'openclip', file: 'openclip.safetensors', config: {}, ref: 'openclip' },
  { name: 'openai', file: 'clip_openai.pth', config: { act_layer: 'quick_gelu' }, ref: 'clip_openai' },
];

let dir: string;
const weights: Record<string, string> = {};
const refs: Record<string, Record<string, { shape: number[]; data: Float32Array }>> = {};

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vitreg-families-'));
  // Each family in its own names with its config stored (head dim 16; QuickGELU for OpenAI), so that
  // one command runs several families without --config.
  for (const f of families) {
    const loaded = await readWeights(join(FAMILIES, f.file), { config: { num_heads: HEADS, ...f.config } });
    const { tensors, metadata } = encodeStateDict(loaded.stateDict, loaded.config, { naming: loaded.naming });
    weights[f.name] = join(dir, `${f.name}.safetensors`);
    await writeSafetensors(weights[f.name]!, tensors, metadata);
    const { tensors: r } = await readSafetensors(join(FAMILIES, `${f.ref}.reference.safetensors`));
    refs[f.name] = Object.fromEntries(Object.entries(r).map(([k, t]) => [k, { shape: t.shape, data: toFloat32(t) }]));
  }
});
after(async () => rm(dir, { recursive: true, force: true }));

const norms = (data: Float32Array, d: number) =>
  Array.from({ length: data.length / d }, (_, i) => Math.hypot(...data.subarray(i * d, (i + 1) * d)));
const near = (a: number, e: number, what: string) => assert.ok(Math.abs(a - e) <= 1e-3 + 2e-4 * Math.abs(e), `${what}: ${a} vs ${e}`);

test('analyze on every family: output and pre-norm token norms as the official code computes them', async () => {
  const runs = [
    ['dino', 'deit3'],
    ['openclip', 'openai'],
  ].map(([a, b]) => ({
    a: a!,
    b: b!,
    out: join(dir, `analyze-${a}`),
  }));
  const results = await Promise.all(
    runs.map((r) =>
      vitreg(['analyze', '--tensor', INPUT, '--weights', weights[r.a]!, '--weights-b', weights[r.b]!, '--backend', 'wasm', '--out', r.out]),
    ),
  );
  for (const [i, r] of runs.entries()) {
    assert.equal(results[i]!.code, 0, results[i]!.stderr);
    for (const [name, sub] of [
      [r.a, ''],
      [r.b, 'b'],
    ] as const) {
      const ref = refs[name]!;
      const pre = norms(ref['sq64.prenorm']!.data, D);
      const post = ref['sq64.patches'] ? norms(ref['sq64.patches'].data, D) : undefined; // OpenAI returns no patch tokens
      for (let b = 0; b < B; b++) {
        const stats = JSON.parse(await readFile(join(r.out, `sq64.input_nhwc-${b}`, sub, 'stats.json'), 'utf8'));
        assert.deepEqual(stats.grid, GRID);
        assert.equal(stats.config.embed_dim, D);
        near(stats.norms.cls.prenorm, pre[b * (1 + P)]!, `${name} image ${b} CLS prenorm`);
        for (let p = 0; p < P; p++) {
          near(stats.norms.patches.prenorm[p], pre[b * (1 + P) + 1 + p]!, `${name} image ${b} patch ${p} prenorm`);
          if (post) near(stats.norms.patches.postnorm[p], post[b * P + p]!, `${name} image ${b} patch ${p} postnorm`);
        }
      }
    }
  }
});

test('discover (LOST) on every family, on keys and on values: the boxes LOST gives on the official ones', async () => {
  const kPatches = 4; // of 16 patches: a seed and a few similar patches, not the whole grid
  const runs = (['keys', 'values'] as const).map((features) => ({ features, out: join(dir, `discover-${features}`) }));
  const results = await Promise.all(
    runs.map((r) =>
      vitreg([
        'discover',
        '--tensor',
        INPUT,
        ...families.flatMap((f) => ['--weights', weights[f.name]!]),
        '--features',
        r.features,
        '--k-patches',
        String(kPatches),
        '--batch-size',
        '2',
        '--backend',
        'wasm',
        '--out',
        r.out,
      ]),
    ),
  );
  for (const [i, r] of runs.entries()) {
    assert.equal(results[i]!.code, 0, results[i]!.stderr);
    for (const f of families) {
      const recs = (await readFile(join(r.out, f.name, 'results.jsonl'), 'utf8'))
        .trim()
        .split('\n')
        .map((l) => JSON.parse(l));
      assert.equal(recs.length, B, `${f.name} ${r.features}`);
      const t = refs[f.name]![`sq64.last_${r.features}`]!.data; // [B, heads, 1 + P, hd]
      for (let b = 0; b < B; b++) {
        const feats = new Float32Array(P * HEADS * HD);
        for (let p = 0; p < P; p++) {
          for (let h = 0; h < HEADS; h++) {
            for (let d = 0; d < HD; d++) feats[p * HEADS * HD + h * HD + d] = t[((b * HEADS + h) * (1 + P) + 1 + p) * HD + d]!;
          }
        }
        const want = lostFromAffinity(affinityHost(feats, P, HEADS * HD), GRID, PATCH, { kPatches, imageSize: { width: 64, height: 64 } });
        assert.deepEqual([recs[b].seed, recs[b].box], [want.seed, want.box], `${f.name} ${r.features} image ${b}`);
      }
    }
  }
});

test('probe (linear classification on CLS) runs on every family', async () => {
  const out = join(dir, 'probe');
  const r = await vitreg([
    'probe',
    ...families.flatMap((f) => ['--weights', weights[f.name]!]),
    '--data',
    'synthetic',
    '--count',
    '12',
    '--test-count',
    '4',
    '--synthetic-size',
    '64',
    '--size',
    '64',
    '--steps',
    '10',
    '--task',
    'class',
    '--token',
    'cls',
    '--backend',
    'wasm',
    '--out',
    out,
  ]);
  assert.equal(r.code, 0, r.stderr);
  for (const f of families) {
    const res = JSON.parse(await readFile(join(out, f.name, 'results.json'), 'utf8'));
    assert.deepEqual([res.task, res.token, res.featureDim, res.train, res.test, res.grid], ['class', 'cls', D, 12, 4, GRID], f.name);
    assert.ok(res.accuracy >= 0 && res.accuracy <= 1, f.name);
  }
});
