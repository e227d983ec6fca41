import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateTrainConfig } from '../src/config-validate.js';

test('data.synthetic_background and data.synthetic_object_side: defaults, accepted values, errors naming the field', () => {
  const def = validateTrainConfig({ preset: 'tiny-supervised' });
  assert.equal(def.data.synthetic_background, 'textured');
  assert.deepEqual(def.data.synthetic_object_side, [0.55, 0.8]);
  const flat = validateTrainConfig({
    preset: 'tiny-supervised',
    data: { synthetic_background: 'flat', synthetic_object_side: [0.2, 0.3] },
  });
  assert.equal(flat.data.synthetic_background, 'flat');
  assert.deepEqual(flat.data.synthetic_object_side, [0.2, 0.3]);
  assert.throws(() => validateTrainConfig({ data: { synthetic_background: 'plain' } }), /data\.synthetic_background/);
  assert.throws(() => validateTrainConfig({ data: { synthetic_object_side: [0.3, 0.2] } }), /data\.synthetic_object_side/);
  assert.throws(() => validateTrainConfig({ data: { synthetic_object_side: [0.01, 0.2] } }), /data\.synthetic_object_side/);
  assert.throws(() => validateTrainConfig({ data: { synthetic_object_side: [0.2, 0.9] } }), /data\.synthetic_object_side/);
});
