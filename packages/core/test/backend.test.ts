import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { createRequire } from 'node:module';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { test } from 'node:test';
import * as tf from '@tensorflow/tfjs-core';
import { BACKEND_NAMES, getBackendName, initBackend } from '../src/backend.js';
import { findVulkanLoader, VULKAN_HINT } from '../src/webgpu-vulkan.js';

const require = createRequire(import.meta.url);
function installed(pkg: string): boolean {
  try {
    require.resolve(pkg);
    return true;
  } catch {
    return false;
  }
}
const hasNodeGpu = installed('@tensorflow/tfjs-node-gpu');
const hasNode = installed('@tensorflow/tfjs-node');
const hasWebGpu = installed('webgpu') && installed('@tensorflow/tfjs-backend-webgpu');
/** Why auto passes webgpu over on a machine with no Vulkan loader (the unit suite's machines). */
const WEBGPU_SKIP = hasWebGpu
  ? `no Vulkan loader (libvulkan.so.1) for Dawn: ${VULKAN_HINT}`
  : 'the webgpu package (Dawn) is not installed: npm i webgpu @tensorflow/tfjs-backend-webgpu@4.22.0';
const noVulkan = findVulkanLoader() === null;

// These tests share the module's state and run in order: auto first.
delete process.env.VITREG_BACKEND;

test('auto picks the first backend that loads and logs why the others were skipped', async () => {
  assert.equal(getBackendName(), null);
  const lines: string[] = [];
  const info = await initBackend('auto', { log: (l) => lines.push(l) });
  assert.equal(lines.length, 1);
  assert.equal(tf.getBackend(), info.tfBackend);
  assert.equal(getBackendName(), info.name);
  if (hasNodeGpu || hasNode) {
    assert.equal(info.tfBackend, 'tensorflow');
    return;
  }
  if (!noVulkan) {
    // A Vulkan loader: webgpu wins on a hardware adapter; a software one (or none) is passed over.
    assert.ok(
      info.name === 'webgpu' || /software|no WebGPU adapter|no Vulkan driver/.test(info.skipped.webgpu ?? ''),
      JSON.stringify(info.skipped),
    );
    return;
  }
  // This machine: neither native package can install and there is no Vulkan loader, so wasm wins.
  assert.equal(info.name, 'wasm');
  assert.deepEqual(info.skipped, {
    'tensorflow-gpu':
      '@tensorflow/tfjs-node-gpu is not installed: npm i @tensorflow/tfjs-node-gpu (Linux x64 with CUDA 11.2 and cuDNN 8.1)',
    webgpu: WEBGPU_SKIP,
    tensorflow: '@tensorflow/tfjs-node is not installed: npm i @tensorflow/tfjs-node',
  });
  assert.equal(
    lines[0],
    'backend: wasm (auto; tensorflow-gpu: skipped (@tensorflow/tfjs-node-gpu is not installed: npm i @tensorflow/tfjs-node-gpu ' +
      `(Linux x64 with CUDA 11.2 and cuDNN 8.1)); webgpu: skipped (${WEBGPU_SKIP}); tensorflow: skipped (@tensorflow/tfjs-node is not installed: npm i @tensorflow/tfjs-node))`,
  );
});

test(
  'webgpu asked for by name without a Vulkan loader is one line saying what to install',
  { skip: !noVulkan && 'a Vulkan loader is installed' },
  async () => {
    const before = tf.getBackend();
    await assert.rejects(initBackend('webgpu', { log: () => {} }), (err: Error) => {
      assert.equal(err.message, `backend 'webgpu' is not available: ${WEBGPU_SKIP}`);
      assert.equal(err.message.includes('\n'), false);
      return true;
    });
    assert.equal(tf.getBackend(), before);
  },
);

test('a second call with the same name, or auto, changes nothing and logs nothing', async () => {
  const lines: string[] = [];
  const first = await initBackend('auto', { log: (l) => lines.push(l) });
  const again = await initBackend('auto', { log: (l) => lines.push(l) });
  const named = await initBackend(first.name, { log: (l) => lines.push(l) });
  assert.equal(again, first);
  assert.equal(named, first);
  assert.deepEqual(lines, []);
});

test(
  'a requested backend that is not installed is an error saying how to install it',
  { skip: hasNode && 'tfjs-node is installed' },
  async () => {
    const before = tf.getBackend();
    await assert.rejects(
      initBackend('tensorflow', { log: () => {} }),
      /^Error: backend 'tensorflow' is not available: @tensorflow\/tfjs-node is not installed: npm i @tensorflow\/tfjs-node$/,
    );
    assert.equal(tf.getBackend(), before);
    await assert.rejects(
      initBackend('bogus' as never),
      /unknown backend 'bogus': expected one of auto, tensorflow-gpu, webgpu, tensorflow, wasm, cpu/,
    );
  },
);

test('switching between cpu and wasm; a small op gives the same numbers on both', async () => {
  const x = [0.3, -1.2, 2.5, 0.7, -0.4, 1.9, 0.05, -2.2, 1.1, 0.6, -0.9, 0.2];
  const w = [0.5, -0.25, 1.5, 0.75, -1, 0.1, 0.2, -0.3, 0.9, 1.2, -0.6, 0.4];
  const compute = () => {
    const a = tf.tensor2d(x, [3, 4]);
    const b = tf.tensor2d(w, [4, 3]);
    const y = tf.softmax(tf.add(tf.matMul(a, b), tf.sqrt(tf.abs(tf.sum(a, 1, true)))));
    const out = y.dataSync();
    tf.dispose([a, b, y]);
    return Array.from(out);
  };
  const lines: string[] = [];
  const cpu = await initBackend('cpu', { log: (l) => lines.push(l) });
  assert.deepEqual(cpu, { name: 'cpu', tfBackend: 'cpu', skipped: {} });
  assert.equal(tf.getBackend(), 'cpu');
  assert.deepEqual(lines, ['backend: cpu']);
  const onCpu = compute();
  await initBackend('wasm', { log: () => {} });
  assert.equal(tf.getBackend(), 'wasm');
  assert.equal(getBackendName(), 'wasm');
  const onWasm = compute();
  // Reference in float64.
  const ref: number[] = [];
  for (let i = 0; i < 3; i++) {
    const row = x.slice(4 * i, 4 * i + 4);
    const bias = Math.sqrt(Math.abs(row.reduce((s, v) => s + v, 0)));
    const logits = [0, 1, 2].map((j) => row.reduce((s, v, k) => s + v * w[3 * k + j], 0) + bias);
    const m = Math.max(...logits);
    const e = logits.map((l) => Math.exp(l - m));
    ref.push(...e.map((v) => v / e.reduce((s, u) => s + u, 0)));
  }
  for (let i = 0; i < ref.length; i++) {
    assert.ok(Math.abs(onCpu[i] - onWasm[i]) <= 1e-6, `element ${i}: cpu ${onCpu[i]} wasm ${onWasm[i]}`);
    assert.ok(Math.abs(onWasm[i] - ref[i]) <= 1e-6, `element ${i}: wasm ${onWasm[i]} ref ${ref[i]}`);
  }
});

test('BACKEND_NAMES lists auto and then the order auto tries', () => {
  assert.deepEqual(BACKEND_NAMES, ['auto', 'tensorflow-gpu', 'webgpu', 'tensorflow', 'wasm', 'cpu']);
});

test('VITREG_BACKEND replaces auto; a bad value is an error naming the variable', async () => {
  // A fresh process: the variable is read only while no backend has been chosen.
  const backend = fileURLToPath(new URL('../src/backend.ts', import.meta.url));
  const script = `
    const { initBackend } = await import(${JSON.stringify(backend)});
    process.env.VITREG_BACKEND = 'gpu';
    const bad = await initBackend().then(() => 'no error', (e) => e.message);
    process.env.VITREG_BACKEND = 'cpu';
    const lines = [];
    const info = await initBackend('auto', { log: (l) => lines.push(l) });
    console.log(JSON.stringify({ bad, name: info.name, lines }));`;
  const { stdout } = await promisify(execFile)(
    process.execPath,
    ['--conditions=vitreg-source', '--import', 'tsx', '--input-type=module', '-e', script],
    { cwd: fileURLToPath(new URL('..', import.meta.url)) },
  );
  assert.deepEqual(JSON.parse(stdout), {
    bad: "VITREG_BACKEND='gpu' is not a backend: expected one of auto, tensorflow-gpu, webgpu, tensorflow, wasm, cpu",
    name: 'cpu',
    lines: ['backend: cpu (from VITREG_BACKEND)'],
  });
});
