/**
 * Sinkhorn-Knopp centering inside the trainer's DINO step (tfjs engine): a 2-rank step's targets and mean
 * gradients equal a single process's on the global batch (sinkhorn-step-case.ts). The function alone is
 * checked against the official code on 2 gloo ranks in recipe.test.ts; this checks its wiring.
 */
import { test, before } from 'node:test';
import { tfjsEngine } from '../src/tfjs-engine.js';
import { useWasm } from './helpers.js';
import { sinkhornStepCase } from './sinkhorn-step-case.js';

before(useWasm);

test('Sinkhorn-Knopp in the DINO step sums over every rank: 2 ranks x 4 images give the targets and gradients of 1 rank x 8 (tfjs engine)', async () => {
  const r = await sinkhornStepCase(tfjsEngine);
  console.log(
    `# sinkhorn step: gradient difference ${r.gradientError.toExponential(2)}, entropy ${r.entropy.ranks} vs ${r.entropy.single}`,
  );
});
