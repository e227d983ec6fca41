/**
 * The WebGPU helpers that need no adapter: Dawn's adapter listing, the adapter flags for --gpu N
 * (Dawn's Node binding picks by name only), software adapters, the binding-size error, the Vulkan loader
 * search. The adapter itself is exercised by test/webgpu/ (scripts/test-webgpu.sh, SwiftShader).
 */
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { adapterFlags, describeAdapter, isSoftwareAdapter, parseAdapterList, type WebGpuAdapterInfo } from '../src/webgpu-dawn.js';
import { bindingLimitError } from '../src/webgpu-fixes.js';
import { findVulkanDrivers, findVulkanLoader } from '../src/webgpu-vulkan.js';

// The message dawn.node (webgpu 0.6.2) rejects requestAdapter with when no adapter name matches the
// `adapter=` flag, with two SwiftShader ICDs and one NVIDIA-like name added by hand.
const MESSAGE =
  "no suitable backends found\nAvailable adapters:\n * backend: 'vulkan', name: 'SwiftShader Device (Subzero)'\n" +
  " * backend: 'vulkan', name: 'SwiftShader Device (Subzero)'\n * backend: 'vulkan', name: 'NVIDIA H100 80GB HBM3'";

test('parseAdapterList reads the backend and name of every adapter Dawn lists, in order', () => {
  assert.deepEqual(parseAdapterList(MESSAGE), [
    { backend: 'vulkan', name: 'SwiftShader Device (Subzero)' },
    { backend: 'vulkan', name: 'SwiftShader Device (Subzero)' },
    { backend: 'vulkan', name: 'NVIDIA H100 80GB HBM3' },
  ]);
  assert.deepEqual(parseAdapterList('no adapters'), []);
});

test('adapterFlags: none for the first adapter, adapter=<name> for a later one Dawn can tell apart', () => {
  const list = parseAdapterList(MESSAGE);
  assert.deepEqual(adapterFlags(list, 0), []);
  assert.deepEqual(adapterFlags(list, 2), ['adapter=NVIDIA H100 80GB HBM3']);
  // Dawn takes the first adapter whose name contains the flag's value: a longer name after a shorter
  // one is reachable, a name contained in an earlier one is not.
  const a100 = [
    { backend: 'vulkan', name: 'NVIDIA A100' },
    { backend: 'vulkan', name: 'NVIDIA A100 80GB' },
  ];
  assert.deepEqual(adapterFlags(a100, 1), ['adapter=NVIDIA A100 80GB']);
  assert.throws(() => adapterFlags([...a100].reverse(), 1), /adapter 1 \('NVIDIA A100'\) has the name of adapter 0/);
});

test('adapterFlags: identical GPUs after the first and indexes out of range are errors naming the adapters', () => {
  const list = parseAdapterList(MESSAGE);
  assert.throws(
    () => adapterFlags(list, 1),
    (err: Error) => {
      assert.equal(
        err.message,
        "--gpu 1: adapter 1 ('SwiftShader Device (Subzero)') has the name of adapter 0, and Dawn's Node binding picks adapters by name only " +
          '(adapters: 0: SwiftShader Device (Subzero) (vulkan); 1: SwiftShader Device (Subzero) (vulkan); 2: NVIDIA H100 80GB HBM3 (vulkan)). ' +
          'Give each process its own GPU instead (Kubernetes: one GPU per pod; Slurm: --gpus-per-task=1 with ConstrainDevices=yes; ' +
          'docker --gpus device=N) and use --gpu 0',
      );
      return true;
    },
  );
  assert.throws(
    () => adapterFlags(list.slice(0, 1), 1, 'VITREG_GPU=1'),
    /^Error: VITREG_GPU=1: Dawn lists 1 WebGPU adapter \(0: SwiftShader Device \(Subzero\) \(vulkan\)\)$/,
  );
  assert.throws(() => adapterFlags([], 0), /^Error: --gpu 0: Dawn lists 0 WebGPU adapters$/);
  assert.throws(() => adapterFlags(list, -1), /--gpu -1: expected an adapter index >= 0/);
});

test("isSoftwareAdapter: Dawn's fallback flag or a software driver's name; real GPUs are not", () => {
  assert.equal(isSoftwareAdapter({ vendor: 'google', architecture: 'swiftshader', isFallbackAdapter: true }), true);
  assert.equal(isSoftwareAdapter({ vendor: 'mesa', description: 'llvmpipe (LLVM 15.0.6, 256 bits)' }), true);
  assert.equal(isSoftwareAdapter({}, 'lavapipe'), true);
  assert.equal(
    isSoftwareAdapter(
      { vendor: 'nvidia', architecture: 'hopper', description: 'NVIDIA 550.54', isFallbackAdapter: false },
      'NVIDIA H100 80GB HBM3',
    ),
    false,
  );
});

test('bindingLimitError: null up to the limit, then one line naming the tensor, its size and the limit', () => {
  const limits = { maxStorageBufferBindingSize: 1024, maxBufferSize: 4096 };
  assert.equal(bindingLimitError('the output of Fill', [16, 16], 'float32', limits), null); // 1024 bytes: fits exactly
  assert.equal(
    bindingLimitError('the output of Fill', [16, 16, 2], 'int32', limits, 'SwiftShader Device (Subzero)'),
    "webgpu: the output of Fill [16, 16, 2] int32 is 2048 bytes, over the device's maxStorageBufferBindingSize of 1024 bytes " +
      '(SwiftShader Device (Subzero)): use a smaller batch or image size, or another backend',
  );
  // maxBufferSize below the binding limit: that one is named.
  assert.match(
    bindingLimitError('an uploaded tensor', [600], 'float32', { maxStorageBufferBindingSize: 4096, maxBufferSize: 2048 })!,
    /maxBufferSize of 2048 bytes/,
  );
});

test('findVulkanLoader finds libvulkan.so.1 on LD_LIBRARY_PATH', { skip: process.platform !== 'linux' && 'Linux only' }, async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-vk-'));
  try {
    await writeFile(join(dir, 'libvulkan.so.1'), '');
    const found = findVulkanLoader({ LD_LIBRARY_PATH: `/nonexistent:${dir}` });
    // A system-wide loader in an ld.so.conf folder would not come first: LD_LIBRARY_PATH is searched first.
    assert.equal(found, join(dir, 'libvulkan.so.1'));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('describeAdapter: the adapter, its driver and the limits that matter in one line', () => {
  const info: WebGpuAdapterInfo = {
    index: 0,
    adapters: [{ backend: 'vulkan', name: 'SwiftShader Device (Subzero)' }],
    backend: 'vulkan',
    name: 'SwiftShader Device (Subzero)',
    vendor: 'google',
    architecture: 'swiftshader',
    description: 'SwiftShader driver 5.0.0',
    software: true,
    limits: {
      maxStorageBufferBindingSize: 2 ** 30,
      maxBufferSize: 2 ** 31,
      maxComputeWorkgroupStorageSize: 32768,
      maxComputeInvocationsPerWorkgroup: 256,
    },
    deviceLimits: 'adapter',
  };
  assert.equal(
    describeAdapter(info),
    'adapter 0 of 1: SwiftShader Device (Subzero) (google swiftshader, SwiftShader driver 5.0.0, vulkan), software; ' +
      'maxStorageBufferBindingSize 1 GiB, maxBufferSize 2 GiB, workgroup storage 32768 B, 256 invocations',
  );
});

test(
  'findVulkanDrivers: VK_ICD_FILENAMES replaces the search (files or folders), VK_ADD_DRIVER_FILES adds',
  { skip: process.platform !== 'linux' && 'Linux only' },
  async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vitreg-icd-'));
    try {
      await writeFile(join(dir, 'a.json'), '{}');
      await writeFile(join(dir, 'b.json'), '{}');
      await writeFile(join(dir, 'notes.txt'), '');
      assert.deepEqual(findVulkanDrivers({ VK_ICD_FILENAMES: join(dir, 'a.json') }), [join(dir, 'a.json')]);
      assert.deepEqual(findVulkanDrivers({ VK_ICD_FILENAMES: dir })!.sort(), [join(dir, 'a.json'), join(dir, 'b.json')]);
      assert.deepEqual(findVulkanDrivers({ VK_ICD_FILENAMES: '/nonexistent/x.json' }), []);
      // The XDG folders: a data dir holding vulkan/icd.d/*.json.
      const data = join(dir, 'share');
      await mkdir(join(data, 'vulkan', 'icd.d'), { recursive: true });
      await writeFile(join(data, 'vulkan', 'icd.d', 'nvidia_icd.json'), '{}');
      const found = findVulkanDrivers({
        HOME: dir,
        XDG_DATA_DIRS: data,
        XDG_CONFIG_DIRS: join(dir, 'none'),
        VK_ADD_DRIVER_FILES: join(dir, 'b.json'),
      })!;
      assert.ok(found.includes(join(data, 'vulkan', 'icd.d', 'nvidia_icd.json')), JSON.stringify(found));
      assert.ok(found.includes(join(dir, 'b.json')), JSON.stringify(found));
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  },
);
