import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { InputError } from '../src/errors.js';
import { backendBudget, checkMemoryFit, formatBytes, hostMemory, totalNeed, WASM_HEAP_BYTES, type MemoryNeed } from '../src/memory-fit.js';

const GiB = 2 ** 30;
const plenty = { available: 64 * GiB, source: 'test host' };
const need = (weights: number, activations = 0, largestTensor = 0): MemoryNeed => ({
  weights,
  gradients: 0,
  optimizer: 0,
  activations,
  largestTensor,
});

test("each backend's budget: wasm's 4 GiB heap (or less host memory), WebGPU's buffer limits, the host's free memory", () => {
  assert.deepEqual(backendBudget('wasm', { host: plenty }), {
    backend: 'wasm',
    total: WASM_HEAP_BYTES,
    totalSource: "the wasm backend's 4 GiB heap (32-bit addresses)",
  });
  assert.equal(backendBudget('wasm', { host: { available: GiB, source: 'low' } }).total, GiB);
  const gpu = backendBudget('webgpu', { webgpuLimits: { maxBufferSize: 4 * GiB, maxStorageBufferBindingSize: 2 * GiB } });
  assert.equal(gpu.maxTensor, 2 * GiB);
  assert.match(gpu.maxTensorSource!, /maxStorageBufferBindingSize/);
  assert.equal(gpu.total, undefined);
  assert.equal(backendBudget('tensorflow', { host: { available: 3 * GiB, source: 'h' } }).total, 3 * GiB);
  assert.equal(backendBudget('cpu', { host: { available: 5, source: 'h' } }).total, 5);
  assert.deepEqual(backendBudget('tensorflow-gpu'), { backend: 'tensorflow-gpu' });
});

test('host memory is the lower of the free memory and what the cgroup limit leaves', async (t) => {
  const root = await mkdtemp(join(tmpdir(), 'vitreg-cgroup-'));
  t.after(() => rm(root, { recursive: true, force: true }));
  assert.ok(hostMemory(root).available > 0); // no cgroup files: the OS figure
  await writeFile(join(root, 'memory.max'), `${2 * GiB}\n`);
  await writeFile(join(root, 'memory.current'), `${GiB / 2}\n`);
  const h = hostMemory(root);
  assert.ok(h.available <= 1.5 * GiB);
  if (h.available === 1.5 * GiB) assert.match(h.source, /cgroup memory limit \(2\.00 GiB, 1\.50 GiB left\)/);
  await writeFile(join(root, 'memory.max'), 'max\n');
  assert.ok(hostMemory(root).available > 0);
  const v1 = join(root, 'v1');
  await mkdir(join(v1, 'memory'), { recursive: true });
  await writeFile(join(v1, 'memory', 'memory.limit_in_bytes'), String(1024));
  await writeFile(join(v1, 'memory', 'memory.usage_in_bytes'), String(24));
  assert.equal(hostMemory(v1).available, 1000);
});

test('a need over the budget is one InputError with every figure and the ways out', () => {
  const n: MemoryNeed = { weights: 2.5 * GiB, gradients: GiB, optimizer: 2 * GiB, activations: 0.5 * GiB, largestTensor: 0 };
  assert.equal(totalNeed(n), 6 * GiB);
  assert.throws(
    () => checkMemoryFit('training x', n, backendBudget('wasm', { host: plenty })),
    (err: Error) => {
      assert.ok(err instanceof InputError);
      assert.equal(
        err.message.split('; ways out')[0],
        "training x needs about 6.00 GiB (weights 2.50 GiB + gradients 1.00 GiB + optimiser state 2.00 GiB + activations 512 MiB) on the wasm backend, more than the wasm backend's 4 GiB heap (32-bit addresses) of 4.00 GiB",
      );
      assert.match(err.message, /ONNX Runtime engine .*tfjs-node .*fp16 weights/);
      assert.ok(!err.message.includes('\n'));
      return true;
    },
  );
  assert.equal(checkMemoryFit('small', need(GiB), backendBudget('wasm', { host: plenty })), GiB);
  assert.throws(
    () =>
      checkMemoryFit('attention', need(1, 1, 3 * GiB), backendBudget('webgpu', { webgpuLimits: { maxStorageBufferBindingSize: 2 * GiB } })),
    /attention makes a tensor of 3\.00 GiB on the webgpu backend, more than the WebGPU device's maxStorageBufferBindingSize of 2\.00 GiB/,
  );
  assert.throws(
    () =>
      checkMemoryFit(
        'm',
        need(3 * GiB),
        backendBudget('tensorflow', { host: { available: 2 * GiB, source: "the host's free memory (2.00 GiB)" } }),
      ),
    /m needs about 3\.00 GiB .* on the tensorflow backend, more than the host's free memory \(2\.00 GiB\) of 2\.00 GiB/,
  );
  assert.equal(checkMemoryFit('native gpu', need(100 * GiB), backendBudget('tensorflow-gpu')), 100 * GiB);
  assert.equal(formatBytes(1536), '2 KiB');
});
