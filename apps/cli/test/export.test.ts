/**
 * `vitreg export` and the --engine / --device / --threads flags end to end: an exported .onnx reproduces
 * the DINOv2 reference outputs through `vitreg features` (allclose 1e-4 / 1e-4, as parity.test.ts), the
 * tfjs and onnxruntime engines agree on the same checkpoint, fp16 storage halves the file, and every bad
 * input is one line on stderr with a non-zero exit.
 */
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, stat, writeFile } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { readSafetensors, toFloat32 } from '@vitreg/core';
import { CliError } from '../src/cli.ts';
import { commands } from '../src/commands/index.ts';
import { FIXTURES, lastLine, vitreg } from './helpers.ts';

let dir: string;
const REF = join(FIXTURES, 'reg4.reference.safetensors');
const W = join(FIXTURES, 'reg4.dinov2.safetensors');
const HEADS = '{"num_heads": 3}';

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vitreg-export-'));
});
after(async () => rm(dir, { recursive: true, force: true }));

function allclose(a: Float32Array, b: Float32Array, atol = 1e-4, rtol = 1e-4): string | null {
  if (a.length !== b.length) return `length ${a.length} != ${b.length}`;
  for (let i = 0; i < a.length; i++)
    if (!(Math.abs(a[i]! - b[i]!) <= atol + rtol * Math.abs(b[i]!))) return `element ${i}: ${a[i]} vs ${b[i]}`;
  return null;
}

test('export fp32 and fp16, then features on the .onnx reproduce the reference (98x140)', async () => {
  const onnx = join(dir, 'reg4.onnx');
  const half = join(dir, 'reg4.fp16.onnx');
  const outputs = 'cls,registers,patches,prenorm,attention,keys';
  const [a, b] = await Promise.all([
    vitreg(['export', '--weights', W, '--config', HEADS, '--size', '98x140', '--outputs', outputs, '--out', onnx]),
    vitreg(['export', '--weights', W, '--config', HEADS, '--size', '98x140', '--dtype', 'fp16', '--out', half]),
  ]);
  assert.equal(a.code, 0, a.stderr);
  assert.equal(b.code, 0, b.stderr);
  assert.match(lastLine(a.stderr), /wrote .*reg4\.onnx \(98x140, fp32\)/);
  assert.ok((await stat(half)).size < 0.6 * (await stat(onnx)).size, 'fp16 file about half the size');
  const out = join(dir, 'f.safetensors');
  const r = await vitreg(['features', '--weights', onnx, '--tensor', `${REF}:rect98x140.input_nhwc`, '--attention', 'last', '--out', out]);
  assert.equal(r.code, 0, r.stderr);
  const [{ tensors: got, metadata }, { tensors: ref }] = await Promise.all([readSafetensors(out), readSafetensors(REF)]);
  for (const [mine, theirs] of [
    ['cls', 'cls'],
    ['registers', 'registers'],
    ['patches', 'patches'],
    ['prenorm', 'prenorm'],
    ['attention', 'last_attn'],
  ]) {
    assert.equal(allclose(toFloat32(got[mine]!), toFloat32(ref[`rect98x140.${theirs}`]!)), null, mine);
  }
  assert.match(metadata.vitreg_engine!, /^onnxruntime 1\.\d+\.\d+ cpu/);
});

test('features: --engine tfjs and --engine onnxruntime --threads 1 agree on a checkpoint (224x224, every block)', async () => {
  const outs = ['tfjs', 'onnxruntime'].map((e) => join(dir, `${e}.safetensors`));
  const runs = await Promise.all([
    vitreg([
      'features',
      '--weights',
      W,
      '--config',
      HEADS,
      '--tensor',
      `${REF}:sq224.input_nhwc`,
      '--attention',
      'all',
      '--layers',
      'all',
      '--engine',
      'tfjs',
      '--backend',
      'wasm',
      '--out',
      outs[0]!,
    ]),
    vitreg([
      'features',
      '--weights',
      W,
      '--config',
      HEADS,
      '--tensor',
      `${REF}:sq224.input_nhwc`,
      '--attention',
      'all',
      '--layers',
      'all',
      '--engine',
      'onnxruntime',
      '--threads',
      '1',
      '--out',
      outs[1]!,
    ]),
  ]);
  runs.forEach((r) => assert.equal(r.code, 0, r.stderr));
  const [t, o] = await Promise.all(outs.map((f) => readSafetensors(f)));
  assert.deepEqual(Object.keys(o!.tensors).sort(), Object.keys(t!.tensors).sort());
  assert.ok(o!.tensors['attention.layer0'] && o!.tensors['layer1.prenorm']);
  for (const name of Object.keys(t!.tensors)) {
    assert.equal(allclose(toFloat32(o!.tensors[name]!), toFloat32(t!.tensors[name]!)), null, name);
  }
  assert.equal(t!.metadata.vitreg_engine, 'tfjs wasm');
  assert.equal(
    allclose(toFloat32(o!.tensors.cls!), toFloat32((await readSafetensors(REF)).tensors['sq224.cls']!)),
    null,
    'cls vs reference',
  );
});

test('bad inputs: one CliError line each (run in-process; main prints it as the one stderr line)', async () => {
  const onnx = join(dir, 'small.onnx');
  await commands.export!.run(['--weights', W, '--config', HEADS, '--size', '98x140', '--out', onnx]);
  const junk = join(dir, 'junk.onnx');
  await writeFile(junk, Buffer.from('not a model at all'));
  const x = (name: string) => join(dir, name);
  const t98 = `${REF}:rect98x140.input_nhwc`;
  const cases: [string[], RegExp][] = [
    [
      ['export', '--weights', W, '--config', HEADS, '--size', '100x140', '--out', x('a.onnx')],
      /size 100x140 must be positive multiples of the patch size 14/,
    ],
    [['export', '--weights', W, '--config', HEADS, '--size', 'big', '--out', x('a.onnx')], /--size: expected HxW or N/],
    [['export', '--weights', W, '--config', HEADS, '--outputs', 'cls,tokens', '--out', x('a.onnx')], /--outputs: unknown output "tokens"/],
    [['export', '--weights', W, '--config', HEADS, '--out', x('a.safetensors')], /--out: expected a \.onnx path/],
    [['export', '--weights', W, '--config', HEADS, '--format', 'tflite', '--out', x('a.onnx')], /--format: expected one of onnx/],
    [
      ['export', '--weights', W, '--config', HEADS, '--outputs', 'pooled', '--out', x('a.onnx')],
      /output "pooled" needs a config with proj_dim/,
    ],
    [['export', '--weights', x('none.pth'), '--out', x('a.onnx')], /none\.pth does not exist/],
    [
      ['features', '--weights', onnx, '--tensor', `${REF}:sq224.input_nhwc`, '--out', x('f.safetensors')],
      /small\.onnx was exported for 98x140 images, got 224x224/,
    ],
    [
      ['features', '--weights', onnx, '--tensor', t98, '--layers', 'all', '--out', x('f.safetensors')],
      /small\.onnx has no output "layers"/,
    ],
    [['features', '--weights', junk, '--tensor', t98, '--out', x('f.safetensors')], /junk\.onnx: not an ONNX model file/],
    [
      ['features', '--weights', onnx, '--engine', 'tfjs', '--tensor', t98, '--out', x('f.safetensors')],
      /--engine tfjs cannot run .*small\.onnx/,
    ],
    [
      ['features', '--weights', onnx, '--config', HEADS, '--tensor', t98, '--out', x('f.safetensors')],
      /--model and --config do not apply to .*small\.onnx/,
    ],
    [
      ['features', '--weights', W, '--config', HEADS, '--device', 'tpu', '--tensor', t98, '--out', x('f.safetensors')],
      /--device: expected one of cpu, cuda, webgpu/,
    ],
    [
      ['features', '--weights', W, '--config', HEADS, '--engine', 'torch', '--tensor', t98, '--out', x('f.safetensors')],
      /--engine: expected one of auto, tfjs, onnxruntime/,
    ],
    [
      ['features', '--weights', W, '--config', HEADS, '--engine', 'tfjs', '--threads', '2', '--tensor', t98, '--out', x('f.safetensors')],
      /--threads applies to --engine onnxruntime/,
    ],
    [
      ['features', '--weights', W, '--config', HEADS, '--threads', '0', '--tensor', t98, '--out', x('f.safetensors')],
      /--threads: expected an integer >= 1/,
    ],
    [['probe', '--weights', onnx, '--data', 'synthetic', '--out', x('p')], /small\.onnx was exported for 98x140 images, got 224x224/],
  ];
  for (const [args, re] of cases) {
    await assert.rejects(commands[args[0]!]!.run(args.slice(1)), (err: Error) => {
      assert.ok(err instanceof CliError, `${args.join(' ')}: ${err.stack}`);
      assert.ok(!err.message.includes('\n'), err.message);
      assert.match(err.message, re);
      return true;
    });
  }
  // As a user sees it: the line on stderr and exit code 2.
  const r = await vitreg(cases[7]![0]);
  assert.equal(r.code, 2);
  assert.equal(
    r.stderr
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('vitreg')).length,
    1,
    r.stderr,
  );
  assert.match(lastLine(r.stderr), cases[7]![1]);
});

test('features --device cuda: one CliError line where the CUDA provider (or a GPU) is missing; where it runs, the reference outputs', async () => {
  // onnxruntime-node's install script downloads the CUDA 12 provider next to its binding (denied in this
  // repository's CI, allowed on a user's machine with ONNXRUNTIME_NODE_INSTALL=cuda12), as in
  // packages/registers/test/onnx.test.ts.
  const ortDir = dirname(createRequire(import.meta.url).resolve('onnxruntime-node/package.json'));
  const provider = join(ortDir, 'bin', 'napi-v6', process.platform, process.arch, 'libonnxruntime_providers_cuda.so');
  const out = join(dir, 'cuda.safetensors');
  const args = ['--weights', W, '--config', HEADS, '--device', 'cuda', '--tensor', `${REF}:rect98x140.input_nhwc`, '--out', out];
  try {
    await commands.features!.run(args);
  } catch (err) {
    assert.ok(err instanceof CliError, (err as Error).stack);
    assert.match(err.message, /^--device cuda: not available here: /);
    assert.ok(!err.message.includes('\n'), err.message);
    return;
  }
  assert.ok(existsSync(provider), `CUDA ran, so its provider is installed (${provider})`);
  // CUDA may run the products in TF32: the reference outputs within 1e-2.
  const [got, ref] = await Promise.all([readSafetensors(out), readSafetensors(REF)]);
  assert.match(got.metadata.vitreg_engine!, /^onnxruntime \S+ cuda,/);
  for (const name of ['cls', 'patches']) {
    const err = allclose(toFloat32(got.tensors[name]!), toFloat32(ref.tensors[`rect98x140.${name}`]!), 1e-2, 1e-2);
    assert.equal(err, null, `cuda ${name}: ${err}`);
  }
});
