/**
 * The webgpu backend on a real adapter (SwiftShader in CI; scripts/test-webgpu.sh sets
 * LD_LIBRARY_PATH and VK_ICD_FILENAMES): the log line naming the adapter and its limits, auto passing a
 * software adapter over, synchronous reads, AddN over more inputs than a shader may bind, the binding
 * limit errors, a GPU error surfacing at the next read, and --gpu N among several adapters.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { copyFile, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import * as tf from '@tensorflow/tfjs-core';
import { adapterFlags, initBackend } from '@vitreg/core';

const ROOT = fileURLToPath(new URL('../..', import.meta.url));

/** Runs a module snippet in a fresh process (a fresh Vulkan loader) and returns its last stdout line as JSON. */
async function inChild(script: string, env: NodeJS.ProcessEnv): Promise<Record<string, unknown>> {
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ['--conditions=vitreg-source', '--import', 'tsx', '--input-type=module', '-e', script],
    {
      cwd: ROOT,
      env,
      timeout: 120_000,
    },
  );
  return JSON.parse(stdout.trim().split('\n').pop()!) as Record<string, unknown>;
}

test('--backend webgpu logs the adapter, its driver and limits in one line', async () => {
  const lines: string[] = [];
  const info = await initBackend('webgpu', { log: (l) => lines.push(l) });
  assert.equal(tf.getBackend(), 'webgpu');
  assert.equal(lines.length, 1);
  const a = info.adapter!;
  assert.match(
    lines[0]!,
    new RegExp(
      `^backend: webgpu; adapter 0 of ${a.adapters.length}: .+ \\(.+\\).*; maxStorageBufferBindingSize [\\d.]+ [MG]iB, maxBufferSize [\\d.]+ [MG]iB, workgroup storage \\d+ B, \\d+ invocations$`,
    ),
  );
  assert.ok(a.name && a.backend && a.limits.maxStorageBufferBindingSize >= 128 * 2 ** 20, JSON.stringify(a));
  assert.ok(lines[0]!.includes(a.name));
});

test('dataSync and arraySync on webgpu: the bytes data() reads, and the right numbers', async () => {
  await initBackend('webgpu', { log: () => {} });
  const a = [
    [1.5, -2, 0.25],
    [3, 0.5, -1],
  ];
  const b = [
    [2, -1],
    [0.5, 4],
    [-3, 1.5],
  ];
  const want = a.map((row) => [0, 1].map((j) => row.reduce((s, v, k) => s + v * b[k]![j]!, 0)));
  const y = tf.matMul(tf.tensor2d(a), tf.tensor2d(b));
  assert.deepEqual(y.arraySync(), want); // small exact binary fractions: exact in float32
  const z = tf.exp(tf.range(0, 1000, 1, 'float32'));
  const sync = z.dataSync();
  const again = tf.exp(tf.range(0, 1000, 1, 'float32'));
  assert.deepEqual(sync, await again.data());
  assert.ok(Math.abs(sync[3]! - Math.exp(3)) <= 1e-5 * Math.exp(3));
  tf.dispose([y, z, again]);
});

test('AddN over more inputs than one shader may bind equals the left-to-right sum', async () => {
  await initBackend('webgpu', { log: () => {} });
  const n = 40; // > maxStorageBuffersPerShaderStage (8 by default) - 1
  const xs = Array.from({ length: n }, (_, i) => tf.tensor1d([i + 1, (i + 1) * 0.5, -(i % 7)]));
  const sum = tf.addN(xs);
  const want = [0, 1, 2].map((j) => xs.reduce((s, _, i) => s + [i + 1, (i + 1) * 0.5, -(i % 7)][j]!, 0));
  assert.deepEqual(Array.from(await sum.data()), want);
  tf.dispose([...xs, sum]);
});

test("a tensor over the device's binding limit is an error naming it, its size and the limit", async () => {
  // WebGPU's default limits: 128 MiB per storage buffer binding.
  const info = await initBackend('webgpu', { log: () => {}, webgpuLimits: 'default' });
  try {
    assert.throws(
      () => tf.fill([8192, 4097], 1),
      new Error(
        "webgpu: the output of Fill [8192, 4097] float32 is 134250496 bytes, over the device's maxStorageBufferBindingSize of 134217728 bytes " +
          `(${info.adapter!.name}): use a smaller batch or image size, or another backend`,
      ),
    );
    const big = tf.tensor1d(new Float32Array(2 ** 25 + 1));
    assert.throws(
      () => tf.sum(big),
      /^Error: webgpu: an uploaded tensor \[33554433\] float32 is 134217732 bytes, over the device's maxStorageBufferBindingSize of 134217728 bytes/,
    );
    big.dispose();
    // Just under the limit works.
    const ok = tf.fill([8192, 4096], 2);
    assert.equal((await tf.sum(ok).data())[0], 2 * 8192 * 4096);
    ok.dispose();
  } finally {
    await initBackend('webgpu', { log: () => {} });
  }
});

test("a GPU error is thrown, with Dawn's message, by the next read", async () => {
  await initBackend('webgpu', { log: () => {} });
  const device = (tf.backend() as unknown as { device: { createBuffer(d: object): unknown } }).device;
  device.createBuffer({ size: 4, usage: 0 }); // invalid: a buffer needs a usage
  const x = tf.add(tf.tensor1d([1, 2, 3]), tf.tensor1d([4, 5, 6]));
  await assert.rejects(x.data(), /^Error: webgpu: the GPU reported an error, so results are invalid: .*usage/i);
  assert.deepEqual(Array.from(await tf.add(x, 0).data()), [5, 7, 9]); // reported once; later reads work
});

test('auto passes a software adapter over for wasm and says why', async () => {
  const env = { ...process.env };
  delete env.VITREG_BACKEND;
  const out = await inChild(
    `const { initBackend } = await import('@vitreg/core');
     const info = await initBackend('auto', { log: () => {} });
     console.log(JSON.stringify({ name: info.name, webgpu: info.skipped.webgpu }));`,
    env,
  );
  assert.equal(out.name, 'wasm');
  assert.match(String(out.webgpu), /^adapter 0 is software \(.+\), slower than wasm: --backend webgpu uses it anyway$/);
});

test('Dawn picks a later adapter by the name adapterFlags gives', async () => {
  const { create } = (await import('webgpu' as string)) as {
    create(flags: string[]): { requestAdapter(): Promise<{ info: { description: string } } | null> };
  };
  const info = (await initBackend('webgpu', { log: () => {} })).adapter!;
  const flags = adapterFlags(
    [
      { backend: 'vulkan', name: 'Some Other GPU' },
      { backend: info.backend, name: info.name },
    ],
    1,
  );
  assert.deepEqual(flags, [`adapter=${info.name}`]);
  const adapter = await create(flags).requestAdapter();
  assert.equal(adapter?.info.description, info.description);
});

test(
  '--gpu N among two identical adapters: 0 works, 1 is an error saying why, 2 lists the adapters',
  { skip: !process.env.VK_ICD_FILENAMES && 'needs VK_ICD_FILENAMES (one ICD json)' },
  async () => {
    // Two copies of the same ICD, loaded from two paths: the loader lists two identical devices, as on a
    // machine with several GPUs of one model.
    const icd = process.env.VK_ICD_FILENAMES!.split(':')[0]!;
    const json = JSON.parse(await readFile(icd, 'utf8')) as { ICD: { library_path: string } };
    const lib = json.ICD.library_path.startsWith('/') ? json.ICD.library_path : join(icd, '..', json.ICD.library_path);
    const dir = await mkdtemp(join(tmpdir(), 'vitreg-icd-'));
    try {
      await copyFile(lib, join(dir, 'second.so'));
      await writeFile(join(dir, 'first.json'), JSON.stringify({ ...json, ICD: { ...json.ICD, library_path: lib } }));
      await writeFile(join(dir, 'second.json'), JSON.stringify({ ...json, ICD: { ...json.ICD, library_path: join(dir, 'second.so') } }));
      const env = { ...process.env, VK_ICD_FILENAMES: `${join(dir, 'first.json')}:${join(dir, 'second.json')}` };
      const script = (gpu: number) => `
      const { initBackend } = await import('@vitreg/core');
      const lines = [];
      const r = await initBackend('webgpu', { gpu: ${gpu}, log: (l) => lines.push(l) }).then((i) => ({ index: i.adapter.index, count: i.adapter.adapters.length, line: lines[0] }), (e) => ({ error: e.message }));
      console.log(JSON.stringify(r));`;
      const first = await inChild(script(0), env);
      assert.equal(first.index, 0);
      assert.equal(first.count, 2);
      assert.match(String(first.line), /^backend: webgpu; adapter 0 of 2: /);
      const second = await inChild(script(1), env);
      assert.match(
        String(second.error),
        /^backend 'webgpu' is not available: --gpu 1: adapter 1 \('.+'\) has the name of adapter 0, and Dawn's Node binding picks adapters by name only/,
      );
      const third = await inChild(script(2), env);
      assert.match(
        String(third.error),
        /^backend 'webgpu' is not available: --gpu 2: Dawn lists 2 WebGPU adapters \(0: .+ \(vulkan\); 1: .+ \(vulkan\)\)$/,
      );
      const byEnv = await inChild(script(0).replace('gpu: 0, ', ''), { ...env, VITREG_GPU: '5' });
      assert.match(String(byEnv.error), /VITREG_GPU=5: Dawn lists 2 WebGPU adapters/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
);
