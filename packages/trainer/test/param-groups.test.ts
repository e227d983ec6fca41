/**
 * The parameter-group rules at their edges (recipe.test.ts checks every multiplier of a small ViT and
 * DINO head against DINOv2's get_params_groups_with_decay): the default rule is DINOv2's, timm's rule
 * as written (tensors of at most one dimension, `.bias`, pos_embed / cls_token / dist_token), layer ids
 * of blocks past 9 and of CLIP's norm_pre, and no layer decay in a head (depth 0).
 */
import { test, before } from 'node:test';
import assert from 'node:assert/strict';
import * as tf from '@tensorflow/tfjs-core';
import { isNoDecay, layerId, paramGroups, plainParams } from '../src/param-groups.js';
import { useWasm } from './helpers.js';

before(useWasm);

test("isNoDecay: DINOv2's rule by default; timm's exempts dist_token and any name ending in .bias", () => {
  // cls_token: decayed under DINOv2's rule (the default), exempt under timm's.
  assert.equal(isNoDecay('cls_token', [1, 1, 8]), false);
  assert.equal(isNoDecay('cls_token', [1, 1, 8], 'timm'), true);
  assert.equal(isNoDecay('dist_token', [1, 1, 8], 'timm'), true);
  assert.equal(isNoDecay('head.bias', [2, 3], 'timm'), true, 'by name, whatever the rank');
  assert.equal(isNoDecay('bias.weight', [2, 3], 'timm'), false);
  assert.equal(isNoDecay('blocks.0.ls1.gamma', [8]), true);
  assert.equal(isNoDecay('blocks.0.mlp.fc1.weight', [8, 32]), false);
});

test('layerId: blocks past 9, norm_pre before the blocks, names that only contain blocks.N after the blocks', () => {
  assert.equal(layerId('blocks.11.attn.qkv.weight', 12), 12);
  assert.equal(layerId('blocks.0.norm1.weight', 12), 1);
  assert.equal(layerId('norm_pre.weight', 12), 0);
  assert.equal(layerId('patch_embed.proj.weight', 12), 0);
  assert.equal(layerId('head.blocks.3.weight', 12), 13);
  assert.equal(layerId('norm.weight', 12), 13);
});

test('paramGroups: a head (depth 0) gets no layer decay; the default weight-decay rule is DINOv2s', () => {
  const v = (shape: number[]) => tf.variable(tf.zeros(shape));
  const params = { cls_token: v([1, 1, 4]), 'patch_embed.proj.weight': v([4, 4]), 'mlp.0.bias': v([4]) };
  const head = paramGroups('h', params, 0, { layerDecay: 0.5, patchEmbedLrMult: 0.2 });
  assert.deepEqual(
    head.map((s) => [s.name, s.lrMult, s.wdMult, s.isLastLayer]),
    [
      ['h.cls_token', 1, 1, false],
      ['h.patch_embed.proj.weight', 0.2, 1, false],
      ['h.mlp.0.bias', 1, 0, false],
    ],
  );
  assert.deepEqual(
    plainParams(params).map((s) => [s.name, s.lrMult, s.wdMult, s.isLastLayer]),
    Object.keys(params).map((n) => [n, 1, 1, false]),
  );
  tf.dispose(Object.values(params));
});

test("paramGroups with weightDecayRule 'timm' applies timm's rule (cls_token and 1-d tensors undecayed), not DINOv2's", () => {
  const v = (shape: number[]) => tf.variable(tf.zeros(shape));
  const params = {
    cls_token: v([1, 1, 4]),
    'norm.weight': v([4]),
    'blocks.0.attn.qkv.weight': v([4, 12]),
    'blocks.0.norm1.w2d': v([4, 4]),
  };
  const wd = (rule: 'timm' | 'dinov2') => paramGroups('backbone', params, 1, { weightDecayRule: rule }).map((s) => [s.name, s.wdMult]);
  assert.deepEqual(wd('timm'), [
    ['backbone.cls_token', 0],
    ['backbone.norm.weight', 0],
    ['backbone.blocks.0.attn.qkv.weight', 1],
    ['backbone.blocks.0.norm1.w2d', 1],
  ]);
  assert.deepEqual(wd('dinov2'), [
    ['backbone.cls_token', 1],
    ['backbone.norm.weight', 0],
    ['backbone.blocks.0.attn.qkv.weight', 1],
    ['backbone.blocks.0.norm1.w2d', 0],
  ]);
});
