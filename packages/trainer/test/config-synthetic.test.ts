import { test } from 'node:test';
import assert from 'node:assert/strict';
import { validateTrainConfig } from '../src/config-validate.js';
import type { TrainConfig } from '../src/config.js';

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
  const { openCaptionData } = await import('../src/clip-setup.js');
  const data = { source: 'synthetic', synthetic_size: 32, synthetic_background: 'flat', synthetic_object_side: [0.2, 0.3] };
  // Image 1 of the train split, made here from the fields by name (textured: without the two fields).
  const image1 = async (c: TrainConfig, flat = true) =>
    (
      await new SyntheticDataset({
        seed: c.data.synthetic_seed,
        size: 32,
        numClasses: c.data.num_classes,
        count: c.data.train_size,
        split: 'train',
        ...(flat ? { background: 'flat', objectSide: [0.2, 0.3] } : {}),
      }).get(1)
    ).image;
  const cfg = validateTrainConfig({ preset: 'tiny-supervised', data });
  const want = await image1(cfg);
  assert.notDeepEqual(Array.from(await image1(cfg, false)), Array.from(want), 'the two backgrounds differ');
  assert.deepEqual(Array.from((await openData(cfg).train.get(1)).image), Array.from(want));
  const clipCfg = validateTrainConfig({ preset: 'tiny-clip', data });
  const caption = await (await openCaptionData(clipCfg)).train.get(1);
  assert.deepEqual(Array.from(caption.image.data), Array.from(await image1(clipCfg)));
});

test("the zero-shot prompts cover the captions the generator writes, flat ('plain') and textured backgrounds", async () => {
  const { SyntheticDataset } = await import('@vitreg/core');
  const { syntheticCaption } = await import('../src/data-captions.js');
  const { syntheticPrompts } = await import('../src/clip-setup.js');
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
