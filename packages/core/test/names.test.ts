import assert from 'node:assert/strict';
import { test } from 'node:test';
import { checkpointNames, stem, uniqueNames } from '../src/index.js';

test('stem, uniqueNames and checkpointNames', () => {
  assert.equal(stem('/a/b/photo.final.png'), 'photo.final');
  assert.deepEqual(uniqueNames(['a b', 'a b', '..x', '', 'ok.png']), ['a_b', 'a_b-2', '_x', 'image', 'ok.png']);
  assert.deepEqual(checkpointNames(['runs/a/model.safetensors', 'runs/b/model.safetensors']), ['a_model', 'b_model']);
  assert.deepEqual(checkpointNames(['x/reg0.safetensors', 'x/reg4.safetensors']), ['reg0', 'reg4']);
});
