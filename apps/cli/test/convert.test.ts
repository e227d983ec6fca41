/**
 * `vitreg convert` on every model family: written back to its own names by default (the official file's
 * tensors), and to timm's names as timm's own conversion code writes them (the fixtures' timm files were
 * made by timm's checkpoint_filter_fn from the official ones), and back.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readSafetensors, toFloat32, type HostTensor } from '@vitreg/core';
import { readCheckpoint, stripPrefix } from '@vitreg/registers';
import { lastLine, ROOT, vitreg } from './helpers.ts';

const FAMILIES = join(ROOT, 'packages', 'registers', 'test', 'fixtures', 'families');
const HEADS = '{"num_heads": 3}';
let dir: string;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vitreg-convert-'));
});
after(async () => rm(dir, { recursive: true, force: true }));

/** A file's tensors as its code names them (prefix stripped), without the names `drop` rejects. */
async function tensorsOf(path: string, drop: (k: string) => boolean = () => false): Promise<Record<string, HostTensor>> {
  const { tensors } = await readCheckpoint(path);
  return Object.fromEntries(Object.entries(stripPrefix(tensors, path)).filter(([k]) => !drop(k)));
}

function sameTensors(got: Record<string, HostTensor>, want: Record<string, HostTensor>, what: string) {
  assert.deepEqual(Object.keys(got).sort(), Object.keys(want).sort(), `${what}: names`);
  for (const [k, w] of Object.entries(want)) {
    assert.deepEqual(got[k]!.shape, w.shape, `${what}: ${k} shape`);
    const a = toFloat32(got[k]!);
    const b = toFloat32(w);
    // Renames, reshapes and transposes only.
    assert.ok(
      a.every((v, i) => Math.abs(v - b[i]!) <= 1e-6 * Math.max(1, Math.abs(b[i]!))),
      `${what}: ${k} values`,
    );
  }
}

const isHead = (k: string) => k === 'head.weight' || k === 'head.bias';

test("convert writes each family back to its own names, and to timm's as timm converts them", async () => {
  const runs: {
    args: string[];
    out: string;
    naming: string;
    want: () => Promise<Record<string, HostTensor>>;
    config?: Record<string, unknown>;
  }[] = [
    { args: ['dino.pth'], out: 'dino.own', naming: 'dino', want: () => tensorsOf(join(FAMILIES, 'dino.pth')) },
    {
      args: ['deit3.models_v2.pth'],
      out: 'deit3.own',
      naming: 'deit3',
      want: () => tensorsOf(join(FAMILIES, 'deit3.models_v2.pth'), isHead),
    },
    {
      args: ['clip_openai.pth', '--config', '{"num_heads": 3, "act_layer": "quick_gelu"}'],
      out: 'openai.own',
      naming: 'clip',
      want: () => tensorsOf(join(FAMILIES, 'clip_openai.pth')),
      config: { act_layer: 'quick_gelu', proj_dim: 32, pre_norm: true },
    },
    // timm's checkpoint_filter_fn(adapt_layer_scale=True) / _convert_openai_clip wrote these fixtures.
    {
      args: ['deit3.models_v2.pth', '--to', 'timm'],
      out: 'deit3.timm',
      naming: 'timm',
      want: () => tensorsOf(join(FAMILIES, 'deit3.timm.safetensors'), isHead),
    },
    {
      args: ['openclip.safetensors', '--to', 'timm'],
      out: 'openclip.timm',
      naming: 'timm',
      want: () => tensorsOf(join(FAMILIES, 'clip.timm.safetensors'), (k) => k === 'head.bias'),
    },
  ];
  const results = await Promise.all(
    runs.map((r) => {
      const [file, ...rest] = r.args;
      const args = [
        'convert',
        join(FAMILIES, file!),
        ...(rest.includes('--config') ? [] : ['--config', HEADS]),
        ...rest,
        '--out',
        join(dir, `${r.out}.safetensors`),
      ];
      return vitreg(args);
    }),
  );
  for (const [i, r] of runs.entries()) {
    assert.equal(results[i]!.code, 0, results[i]!.stderr);
    assert.match(results[i]!.stderr, new RegExp(`-> .*${r.out}\\.safetensors \\(${r.naming}, F32`));
    const { tensors, metadata } = await readSafetensors(join(dir, `${r.out}.safetensors`));
    assert.equal(metadata.vitreg_naming, r.naming, r.out);
    sameTensors(tensors, await r.want(), r.out);
    const config = JSON.parse(metadata.vitreg_config);
    assert.equal(config.num_heads, 3);
    for (const [k, v] of Object.entries(r.config ?? {})) assert.equal(config[k], v, `${r.out}: ${k}`);
  }
});

test('convert: what the target naming cannot hold is one error line', async () => {
  // (unknown --to values: features.test.ts)
  const r = await vitreg([
    'convert',
    join(FAMILIES, 'openclip.safetensors'),
    '--config',
    HEADS,
    '--to',
    'hf',
    '--out',
    join(dir, 'no.safetensors'),
  ]);
  assert.equal(r.code, 2);
  assert.match(lastLine(r.stderr), /--to hf: the Hugging Face Dinov2 layout has no name for tensor "(norm_pre\.weight|proj)"/);
});
