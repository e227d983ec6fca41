/**
 * Choosing the step engine (src/onnx/engine-select.ts), as `vitreg train`, the cluster worker and the demo
 * do: bad options are one InputError naming the flag; auto is onnxruntime where onnxruntime-node loads
 * (said in one line), tfjs when asked; a device without its provider fails at once, naming the device;
 * several training threads of one process on ONNX Runtime's WebGPU provider are refused.
 */
import assert from 'node:assert/strict';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { MALLOC_TUNABLES, mallocTunablesMissing } from '@vitreg/core';
import type { EngineChoice, OnnxDevice } from '@vitreg/registers';
import { onnxRuntimeEngine } from '../src/onnx/engine.js';
import { checkThreadsOnDevice, checkTrainEngineOptions, resolveTrainEngine } from '../src/onnx/engine-select.js';
import { validateTrainConfig } from '../src/config-validate.js';
import { trainThreads } from '../src/threads.js';
import { tfjsEngine } from '../src/tfjs-engine.js';
import { SKIP_NO_ORT, tryOrt } from './onnx-helpers.js';

test('bad engine options are one InputError naming the flag', () => {
  const cases: [Record<string, unknown>, RegExp][] = [
    [{ engine: 'torch' }, /^--engine: expected one of auto, tfjs, onnxruntime, got "torch"$/],
    [{ device: 'tpu' }, /^--device: expected one of cpu, cuda, webgpu, got "tpu"$/],
    [{ threads: 0 }, /^--threads: expected an integer >= 1, got "0"$/],
    [{ engine: 'tfjs', threads: 2 }, /^--threads applies to --engine onnxruntime/],
    [{ engine: 'tfjs', device: 'cuda' }, /^--device applies to --engine onnxruntime/],
  ];
  for (const [o, re] of cases) {
    assert.throws(
      () => checkTrainEngineOptions(o as { engine?: EngineChoice; device?: OnnxDevice; threads?: number }),
      (err: Error) => err.name === 'InputError' && re.test(err.message),
      JSON.stringify(o),
    );
  }
  checkTrainEngineOptions({});
  checkTrainEngineOptions({ engine: 'tfjs', device: 'cpu' });
  assert.throws(() => onnxRuntimeEngine({ precision: 'bf16' as 'fp32' }), /precision "bf16" is not available/);
  assert.throws(() => onnxRuntimeEngine({ threads: 1.5 }), /threads must be an integer >= 1/);
});

test('auto picks onnxruntime where it loads and says so once; tfjs when asked', async (t) => {
  const lines: string[] = [];
  const tfjs = await resolveTrainEngine({ engine: 'tfjs' }, { log: (l) => lines.push(l) });
  assert.equal(tfjs.name, 'tfjs');
  assert.equal(tfjs.factory, tfjsEngine);
  assert.deepEqual(lines, ['engine: tfjs']);
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  lines.length = 0;
  const saved = process.env.GLIBC_TUNABLES;
  t.after(() => (saved === undefined ? delete process.env.GLIBC_TUNABLES : (process.env.GLIBC_TUNABLES = saved)));
  // Started as the bins start Node: the line names the engine only.
  process.env.GLIBC_TUNABLES = `${MALLOC_TUNABLES}:`;
  const auto = await resolveTrainEngine({ threads: 2 }, { log: (l) => lines.push(l) });
  assert.equal(auto.name, 'onnxruntime');
  assert.equal(lines.length, 1);
  assert.match(lines[0]!, /^engine: onnxruntime \S* ?cpu, 2 threads$/);
  // Started otherwise, on glibc: the same line says what the malloc defaults cost and how to avoid them.
  delete process.env.GLIBC_TUNABLES;
  lines.length = 0;
  await resolveTrainEngine({ threads: 2 }, { log: (l) => lines.push(l) });
  assert.equal(lines.length, 1);
  if (mallocTunablesMissing()) {
    assert.ok(
      lines[0]!.endsWith(
        `cpu, 2 threads (glibc's malloc at its defaults: CPU steps 6-23% longer in the train-step bench; start Node with GLIBC_TUNABLES=${MALLOC_TUNABLES}, as the vitreg bins do)`,
      ),
      lines[0],
    );
  } else assert.match(lines[0]!, /cpu, 2 threads$/);
});

test("--device cuda without ONNX Runtime's CUDA provider fails at once in one line naming the device", async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  try {
    const r = await resolveTrainEngine({ engine: 'onnxruntime', device: 'cuda' });
    t.diagnostic(`a CUDA device is available here: ${r.description}`);
  } catch (err) {
    assert.equal((err as Error).name, 'InputError');
    assert.match((err as Error).message, /^--device cuda: not available here: ONNX Runtime's CUDA 12 provider/);
    assert.ok(!(err as Error).message.includes('\n'), 'one line');
  }
});

test('several training threads of one process on webgpu are refused, naming the flag; one thread, other devices and tfjs pass', async () => {
  const refused = /^--workers 2 with --device webgpu: ONNX Runtime's WebGPU provider keeps one device context per process/;
  assert.throws(
    () => checkThreadsOnDevice({ device: 'webgpu' }, 2, '--workers'),
    (err: Error) => err.name === 'InputError' && refused.test(err.message),
  );
  assert.throws(
    () => checkThreadsOnDevice({ engine: 'onnxruntime', device: 'webgpu' }, 8, '--threads'),
    /InputError: --threads 8 with --device webgpu/,
  );
  checkThreadsOnDevice({ device: 'webgpu' }, 1, '--workers');
  checkThreadsOnDevice({ device: 'cuda' }, 4, '--workers');
  checkThreadsOnDevice({ device: 'cpu' }, 4, '--workers');
  checkThreadsOnDevice({ engine: 'tfjs' }, 4, '--workers');
  // trainThreads refuses before it starts a thread (no GPU needed to see it).
  const config = validateTrainConfig({ preset: 'tiny-supervised', train: { steps: 1 } });
  await assert.rejects(
    trainThreads(config, { outDir: join(tmpdir(), 'vitreg-never-written'), workers: 2, engineOptions: { device: 'webgpu' } }),
    /^InputError: trainThreads: workers 2 with --device webgpu/,
  );
});
