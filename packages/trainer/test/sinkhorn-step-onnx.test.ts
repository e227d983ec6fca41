/**
 * Sinkhorn-Knopp centering inside the trainer's DINO step on the ONNX Runtime engine: a 2-rank step's
 * targets and mean gradients equal a single process's on the global batch (sinkhorn-step-case.ts, the
 * case sinkhorn-step.test.ts runs on tfjs). It checks that the engine's dinoTargets sums over every rank
 * (reduceSumOf(sync)); a rank-local sum fails both the entropy and the gradient check. Skipped with one
 * line where onnxruntime-node does not load.
 */
import { test, before } from 'node:test';
import { onnxRuntimeEngine } from '../src/onnx/engine.js';
import { useWasm } from './helpers.js';
import { SKIP_NO_ORT, tryOrt } from './onnx-helpers.js';
import { sinkhornStepCase } from './sinkhorn-step-case.js';

before(useWasm);

test('Sinkhorn-Knopp in the DINO step sums over every rank: 2 ranks x 4 images give the targets and gradients of 1 rank x 8 (onnxruntime engine)', async (t) => {
  if (!(await tryOrt())) return t.skip(SKIP_NO_ORT);
  const r = await sinkhornStepCase(onnxRuntimeEngine({ threads: 1 }));
  console.log(
    `# sinkhorn step (onnxruntime): gradient difference ${r.gradientError.toExponential(2)}, entropy ${r.entropy.ranks} vs ${r.entropy.single}`,
  );
});
