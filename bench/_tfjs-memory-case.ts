/**
 * One case of `npm run bench -- tfjs-memory` (argv: name, config JSON): the check's estimate, one step on
 * wasm, the heap after it; prints one JSON line.
 */
import '@tensorflow/tfjs-backend-wasm';
import * as tf from '@tensorflow/tfjs-core';
import { ensureGradients, WASM_HEAP_BYTES } from '@vitreg/core';
import { checkTrainingFits, modelConfig, tfjsEngine, Trainer, validateTrainConfig } from '@vitreg/trainer';

const [name, json] = process.argv.slice(2) as [string, string];
await tf.setBackend('wasm');
await ensureGradients();
const config = validateTrainConfig(JSON.parse(json));
const GiB = 2 ** 30;
const heap = () => (tf.backend() as unknown as { wasm: { HEAPU8: Uint8Array } }).wasm.HEAPU8.byteLength / GiB;
// The estimate with the limit lifted (the step then runs whatever the check would say).
process.env.VITREG_MEMORY_LIMIT = String(2 ** 50);
const estimate = checkTrainingFits({ config, vit: modelConfig(config), numClasses: 5 }, 'tfjs') / GiB;
const line: Record<string, unknown> = {
  case: 'tfjs-memory',
  name,
  backend: 'wasm',
  estimate_gib: +estimate.toFixed(3),
  refused: estimate * GiB > WASM_HEAP_BYTES,
};
try {
  const t = new Trainer(config, { engine: tfjsEngine });
  t.initTeacher();
  await t.trainStep();
  line.heap_gib = +heap().toFixed(3);
} catch (err) {
  line.heap_gib = null;
  line.error = (err as Error).message.split('\n')[0];
}
process.stdout.write(JSON.stringify(line) + '\n');
process.exit(0);
