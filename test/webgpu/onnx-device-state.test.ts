/**
 * The ONNX Runtime engine's state on the WebGPU device (`keepOnDevice`, the default on webgpu;
 * src/onnx/engine-device.ts): the parameters, the EMA teacher, the optimiser's moments and (world size 1)
 * the gradients stay on the device between runs, updated there by the optimiser and EMA graphs.
 * - tiny-supervised, 2 steps: the same run with the state on the host (`keepOnDevice: false`: every run
 *   copies the parameters in and the gradients out) ends within 1e-5 of it (test/webgpu/onnx-engine.test.ts
 *   compares both presets on the device with the tfjs engine).
 * - What crosses to the device in the second step (`engine.sessions.transfers`): with the state on the
 *   device no parameter and no gradient (in: the batch, the optimiser's per-tensor factors, DINO's targets;
 *   out: the losses, norms and the teacher's logits); with it on the host (supervised), the student's
 *   bytes more in and the gradients' bytes out.
 * - tiny-dino, 2 steps: stopped after 1 (its checkpoint written from the device state, brought to the host)
 *   and resumed on the device, it ends where the uninterrupted run ends, within 1e-6.
 * Run by scripts/test-webgpu.sh; skips with one line where onnxruntime-node or its WebGPU provider is missing.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { initBackend } from '@vitreg/core';
import { onnxRuntimeAvailable } from '@vitreg/registers';
import { onnxRuntimeEngine, OnnxRuntimeEngine, resolveTrainEngine, train, type EngineFactory, type EngineState } from '@vitreg/trainer';
import { keepingState, stateDiff, tinyRun } from '../../packages/trainer/test/onnx-engine-helpers.ts';

interface Capture {
  state?: EngineState;
  /** Per step: bytes handed to ONNX Runtime and taken back, the batch's own bytes. */
  steps: { bytesIn: number; bytesOut: number; batchBytes: number }[];
  studentBytes: number;
  gradBytes: number;
  trained: number;
}

/** An ONNX Runtime engine on webgpu whose per-step transfers and final state are kept. */
function capturing(keepOnDevice: boolean, into: Capture): EngineFactory {
  const factory = keepingState(onnxRuntimeEngine({ device: 'webgpu', keepOnDevice }), into);
  return (ctx) => {
    const e = factory(ctx) as OnnxRuntimeEngine;
    into.studentBytes = e.student.byteLength;
    into.gradBytes = e.grads.byteLength;
    into.trained = e.parameters.length;
    const tr = e.sessions.transfers;
    let before = { bytesIn: 0, bytesOut: 0, batchBytes: 0 };
    const compute = e.computeStep.bind(e);
    e.computeStep = (batch, settings, sync) => {
      const own =
        batch.objective === 'supervised'
          ? batch.images.byteLength + batch.targets.byteLength
          : batch.globals.byteLength + (batch.locals?.byteLength ?? 0) + (batch.masks ? batch.masks.masks.byteLength : 0);
      before = { bytesIn: tr.bytesIn, bytesOut: tr.bytesOut, batchBytes: own };
      return compute(batch, settings, sync);
    };
    const apply = e.applyStep.bind(e);
    e.applyStep = async (step, settings) => {
      const r = await apply(step, settings);
      into.steps.push({ bytesIn: tr.bytesIn - before.bytesIn, bytesOut: tr.bytesOut - before.bytesOut, batchBytes: before.batchBytes });
      return r;
    };
    return e;
  };
}

/** The largest difference of two states' weights and moments (every tensor present in both, the same step). */
function worstDiff(a: EngineState, b: EngineState): number {
  const d = stateDiff(a, b);
  assert.deepEqual(d.missing, []);
  return Math.max(d.weights, d.moments);
}

/** Null when onnxruntime-node's WebGPU provider runs here (and the wasm backend is started), else why not. */
async function available(): Promise<string | null> {
  if (!(await onnxRuntimeAvailable())) return 'onnxruntime-node does not load here';
  try {
    await resolveTrainEngine({ engine: 'onnxruntime', device: 'webgpu' });
  } catch (err) {
    return `onnxruntime's WebGPU provider is not available: ${(err as Error).message.split('\n')[0]}`;
  }
  await initBackend('wasm', { log: () => {} });
  return null;
}

const empty = (): Capture => ({ steps: [], studentBytes: 0, gradBytes: 0, trained: 0 });

test('tiny-supervised on webgpu: state on the device equals state on the host; no parameter or gradient crosses per step', async (t) => {
  const skip = await available();
  if (skip) return t.skip(skip);
  const config = tinyRun('tiny-supervised', { train: { steps: 2 }, optim: { warmup_steps: 0 } });
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-webgpu-state-'));
  try {
    const [dev, host] = [empty(), empty()];
    await train(config, { outDir: join(dir, 'dev'), engine: capturing(true, dev), progress: false });
    await train(config, { outDir: join(dir, 'host'), engine: capturing(false, host), progress: false });
    const worst = worstDiff(dev.state!, host.state!);
    t.diagnostic(
      `max |state difference| ${worst.toExponential(2)}; per step in/out: device ${dev.steps[1]!.bytesIn}/${dev.steps[1]!.bytesOut} B, host ${host.steps[1]!.bytesIn}/${host.steps[1]!.bytesOut} B`,
    );
    assert.ok(worst <= 1e-5, `device and host state differ by ${worst}`);
    const s = 1; // the second step: the state is on the device since the first
    const d = dev.steps[s]!;
    const h = host.steps[s]!;
    // In: the batch, the optimiser's 3 factors per tensor and 2 corrections, the loss scale, the drop-path masks.
    assert.ok(
      d.bytesIn <= d.batchBytes + 12 * dev.trained + 8 + 4 + 4096,
      `step ${s + 1}: ${d.bytesIn} bytes in with the state on the device`,
    );
    assert.ok(d.bytesOut <= 64, `step ${s + 1}: ${d.bytesOut} bytes out with the state on the device (the loss and the norm)`);
    assert.ok(h.bytesIn >= d.bytesIn + host.studentBytes - 4096, `step ${s + 1}: host ${h.bytesIn} bytes in, device ${d.bytesIn}`);
    assert.ok(h.bytesOut >= host.gradBytes, `step ${s + 1}: host ${h.bytesOut} bytes out, gradients ${host.gradBytes}`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('tiny-dino on webgpu: no parameter or gradient crosses per step, and a run resumed from its checkpoint ends where it ends', async (t) => {
  const skip = await available();
  if (skip) return t.skip(skip);
  const config = tinyRun('tiny-dino', { train: { steps: 2, checkpoint_every: 1 }, optim: { warmup_steps: 0 } });
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-webgpu-state-'));
  try {
    const [dev, resumed] = [empty(), empty()];
    await train(config, { outDir: join(dir, 'dev'), engine: capturing(true, dev), progress: false });
    const out = join(dir, 'resumed');
    await train(config, { outDir: out, engine: capturing(true, empty()), progress: false, stopAfter: 1 });
    await train(config, { outDir: out, engine: capturing(true, resumed), progress: false, resume: true });
    const again = worstDiff(dev.state!, resumed.state!);
    const d = dev.steps[1]!;
    t.diagnostic(
      `resumed vs uninterrupted: max |state difference| ${again.toExponential(2)}; step 2: ${d.bytesIn} B in, ${d.bytesOut} B out`,
    );
    assert.ok(again <= 1e-6, `the resumed run differs from the uninterrupted one by ${again}`);
    // In: the crops, the teacher's targets and the optimiser's factors; out: the teacher's logits, losses, norms.
    assert.ok(d.bytesIn < d.batchBytes + dev.studentBytes / 2, `step 2: ${d.bytesIn} bytes in with the state on the device`);
    assert.ok(d.bytesOut < dev.gradBytes / 10, `step 2: ${d.bytesOut} bytes out with the state on the device`);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
