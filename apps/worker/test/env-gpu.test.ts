/**
 * selectDevice's WebGPU adapter (VITREG_GPU): Vulkan ignores CUDA_VISIBLE_DEVICES, so the adapter
 * index is the chosen device's index; --gpu N sets both; a VITREG_GPU already set is kept. And the
 * environment of a local job's processes (localJobEnv); its refusal of several training threads on webgpu.
 */
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { dirname, join } from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { childNodeArgs } from '@vitreg/core';
import { selectDevice } from '../src/env.js';
import { localJobEnv } from '../src/local.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');

test('LOCAL_RANK picks the CUDA device and the WebGPU adapter of the same index', () => {
  const bare: NodeJS.ProcessEnv = {};
  assert.equal(selectDevice(3, bare), 'cuda:3');
  assert.deepEqual(bare, { CUDA_VISIBLE_DEVICES: '3', VITREG_GPU: '3' });
  // The launcher's list: the LOCAL_RANK-th entry, for CUDA and (being the device Vulkan also lists) for WebGPU.
  const listed: NodeJS.ProcessEnv = { CUDA_VISIBLE_DEVICES: '4,5,6' };
  assert.equal(selectDevice(1, listed), 'cuda:5');
  assert.deepEqual(listed, { CUDA_VISIBLE_DEVICES: '5', VITREG_GPU: '5' });
  // One device given (Slurm's --gpus-per-task=1): its index; a UUID falls back to LOCAL_RANK.
  const one: NodeJS.ProcessEnv = { CUDA_VISIBLE_DEVICES: '0' };
  assert.equal(selectDevice(2, one), 'cuda:0');
  assert.equal(one.VITREG_GPU, '0');
  const uuid: NodeJS.ProcessEnv = { CUDA_VISIBLE_DEVICES: 'GPU-8f3e2a' };
  selectDevice(1, uuid);
  assert.equal(uuid.VITREG_GPU, '1');
});

test('a VITREG_GPU already set is kept; no LOCAL_RANK sets nothing', () => {
  const set: NodeJS.ProcessEnv = { VITREG_GPU: '7' };
  assert.equal(selectDevice(2, set), 'cuda:2');
  assert.equal(set.VITREG_GPU, '7');
  const none: NodeJS.ProcessEnv = {};
  assert.equal(selectDevice(-1, none), 'auto');
  assert.deepEqual(none, {});
});

test('--gpu N is the device outright: CUDA device N and WebGPU adapter N, whatever LOCAL_RANK says', () => {
  const env: NodeJS.ProcessEnv = { CUDA_VISIBLE_DEVICES: '4,5,6', VITREG_GPU: '1' };
  assert.equal(selectDevice(1, env, 2), 'cuda:2');
  assert.deepEqual(env, { CUDA_VISIBLE_DEVICES: '2', VITREG_GPU: '2' });
  assert.throws(() => selectDevice(0, {}, -1), /--gpu: expected a GPU index >= 0, got -1/);
});

test("a local job's processes get the token, no launcher rank, and the bins' malloc settings", () => {
  const env = localJobEnv('t0k', { RANK: '3', WORLD_SIZE: '4', PATH: '/bin', GLIBC_TUNABLES: 'glibc.malloc.tcache_count=0' });
  assert.deepEqual(env, {
    PATH: '/bin',
    VITREG_TOKEN: 't0k',
    GLIBC_TUNABLES: 'glibc.malloc.mmap_max=0:glibc.malloc.trim_threshold=1099511627776:glibc.malloc.tcache_count=0',
  });
});

test('vitreg-worker refuses --threads N > 1 on --device webgpu (one WebGPU context per process), exit 2', () => {
  const bin = childNodeArgs(join(ROOT, 'apps', 'worker', 'src', 'main.ts'), ['--conditions=vitreg-source', '--import', 'tsx']);
  const r = spawnSync(process.execPath, [...bin, '--preset', 'tiny-supervised', '--device', 'webgpu', '--threads', '2'], {
    encoding: 'utf8',
    timeout: 60_000,
  });
  assert.equal(r.status, 2, r.stderr);
  assert.match(r.stderr, /--threads 2 with --device webgpu: ONNX Runtime's WebGPU provider keeps one device context per process/);
});
