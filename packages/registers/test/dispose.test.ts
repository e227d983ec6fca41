/**
 * A model built and disposed frees all it took: tf.variable(t) shares t's data and keeps t alive, so a
 * model whose initial tensors were left behind kept every weight's memory after dispose() (a probe over
 * several checkpoints in one process grew by a model each). Counts against tf.memory() before the build.
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { initBackend } from '@vitreg/core';
import { ClipModel, getConfig, VisionTransformer } from '../src/index.ts';

before(async () => {
  await initBackend('wasm', { log: () => {} });
});

test('VisionTransformer and ClipModel: dispose() leaves the tensors and bytes there were before the build', () => {
  const vit = getConfig('vit_micro_patch8', { num_register_tokens: 2, img_size: 32 });
  const builds: [string, () => { dispose(): void }][] = [
    ['VisionTransformer', () => new VisionTransformer(vit, { seed: 1 })],
    [
      'ClipModel',
      () =>
        new ClipModel({
          vision: getConfig('vit_micro_patch8', { proj_dim: 16, img_size: 32 }),
          text: { context_length: 8, vocab_size: 40, width: 16, heads: 2, layers: 1, proj_dim: 16 },
        } as never),
    ],
  ];
  for (const [name, build] of builds) {
    const before = tf.memory();
    const model = build();
    assert.ok(tf.memory().numBytes > before.numBytes, `${name}: built`);
    model.dispose();
    assert.deepEqual([tf.memory().numTensors, tf.memory().numBytes], [before.numTensors, before.numBytes], name);
  }
});
