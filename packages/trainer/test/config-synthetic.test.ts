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

test('the flat-background fields reach the generator: openData and openCaptionData give the images SyntheticDataset makes with them', async () => {
  const { SyntheticDataset } = await import('@vitreg/core');
  const { openData } = await import('../src/data.js');
  const { openCaptionData } = await import('../src/clip-loop.js');
  const cfg = validateTrainConfig({
    preset: 'tiny-supervised',
    data: { source: 'synthetic', synthetic_size: 32, synthetic_background: 'flat', synthetic_object_side: [0.2, 0.3] },
  });
  const direct = new SyntheticDataset({
    seed: cfg.data.synthetic_seed,
    size: 32,
    numClasses: cfg.data.num_classes,
    count: cfg.data.train_size,
    split: 'train',
    background: 'flat',
    objectSide: [0.2, 0.3],
  });
  const textured = new SyntheticDataset({
    seed: cfg.data.synthetic_seed,
    size: 32,
    numClasses: cfg.data.num_classes,
    count: 4,
    split: 'train',
  });
  const want = (await direct.get(1)).image;
  assert.notDeepEqual(Array.from((await textured.get(1)).image), Array.from(want), 'the two backgrounds differ');
  const got = (await openData(cfg).train.get(1)).image;
  assert.deepEqual(Array.from(got), Array.from(want));
  const clipCfg = validateTrainConfig({
    preset: 'tiny-clip',
    data: { source: 'synthetic', synthetic_size: 32, synthetic_background: 'flat', synthetic_object_side: [0.2, 0.3] },
  });
  const clipDirect = new SyntheticDataset({
    seed: clipCfg.data.synthetic_seed,
    size: 32,
    numClasses: clipCfg.data.num_classes,
    count: clipCfg.data.train_size,
    split: 'train',
    background: 'flat',
    objectSide: [0.2, 0.3],
  });
  const caption = await (await openCaptionData(clipCfg)).train.get(1);
  assert.deepEqual(Array.from(caption.image.data), Array.from((await clipDirect.get(1)).image));
});

test("the zero-shot prompts cover the captions the generator writes, flat ('plain') and textured backgrounds", async () => {
  const { SyntheticDataset } = await import('@vitreg/core');
  const { syntheticCaption } = await import('../src/data-captions.js');
  const { syntheticPrompts } = await import('../src/clip-loop.js');
  for (const background of ['flat', 'textured'] as const) {
    const ds = new SyntheticDataset({ seed: 3, size: 32, numClasses: 5, count: 24, split: 'val', background, objectSide: [0.2, 0.6] });
    for (let i = 0; i < ds.length; i++) {
      const caption = syntheticCaption(ds, i);
      const shape = ds.classNames[(await ds.get(i)).label]!;
      assert.ok(syntheticPrompts(shape, background).includes(caption), `${background} ${i}: "${caption}" is not a prompt of ${shape}`);
      assert.equal(caption.includes(' plain '), background === 'flat', caption);
    }
  }
});
