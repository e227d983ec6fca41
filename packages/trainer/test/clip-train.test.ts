/**
 * trainClip / zeroShotTop1 (clip-train.ts) end to end on the synthetic shapes with generated captions and a
 * word-level merges file: a few steps run, move the weights, keep logit_scale in [0, log 100], are the same
 * on a re-run (seeded), and zero-shot accuracy is a fraction; too small a source is refused. (Learning itself:
 * the README's figures, measured with more steps.)
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { initBackend, SyntheticDataset } from '@vitreg/core';
import { ClipModel, ClipTokenizer, getConfig, validateClipConfig, wordMerges } from '@vitreg/registers';
import { captionSource, trainClip, zeroShotTop1 } from '../src/index.ts';

const WORDS = 'a on dark background small large light bright circle square triangle cross ring shaded grainy striped checkered'.split(' ');

function tiny(tok: ClipTokenizer): ClipModel {
  return new ClipModel(
    validateClipConfig({
      vision: getConfig('vit_micro_patch8', { proj_dim: 16, img_size: 32, num_register_tokens: 1 }),
      text: { context_length: 16, vocab_size: tok.vocabSize, width: 32, heads: 2, layers: 1, proj_dim: 16 },
      init_logit_scale: Math.log(100) + 0.5, // above the clamp: the first step must bring it down
    }),
    { seed: 0 },
  );
}

describe('trainClip', () => {
  before(async () => {
    await initBackend('wasm', { log: () => {} });
  });

  test('a few steps on synthetic captions: weights move, logit_scale stays clamped, seeded runs agree', async () => {
    const tok = new ClipTokenizer(wordMerges(WORDS), { contextLength: 16 });
    assert.equal(tok.tokenize(['a small light ring on a dark striped background'], 16).filter((t) => t > 0).length, 11);
    const train = captionSource(new SyntheticDataset({ seed: 0, count: 48, size: 32 }));
    const val = captionSource(new SyntheticDataset({ seed: 0, count: 10, size: 32, split: 'val' }));
    const run = async () => {
      const model = tiny(tok);
      const before = model.text.params['token_embedding.weight']!.dataSync().slice();
      const scales: number[] = [];
      const losses = await trainClip(model, tok, train, {
        steps: 3,
        batchSize: 8,
        lr: 5e-2,
        warmup: 1,
        onStep: () => scales.push(model.logitScale.dataSync()[0]!),
      });
      const after = model.text.params['token_embedding.weight']!.dataSync();
      assert.ok(
        after.some((v, i) => v !== before[i]),
        'the text tower trains',
      );
      for (const s of scales) assert.ok(s >= 0 && s <= Math.log(100) + 1e-6, `logit_scale ${s}`);
      const acc = await zeroShotTop1(model, tok, val, ['circle', 'square', 'triangle', 'cross', 'ring'], (c) => [
        `a small light ${c}`,
        `a large bright ${c}`,
      ]);
      model.dispose();
      return { losses, acc };
    };
    const a = await run();
    assert.equal(a.losses.length, 3);
    for (const l of a.losses) assert.ok(Number.isFinite(l) && l > 0);
    assert.ok(a.acc >= 0 && a.acc <= 1);
    const b = await run();
    assert.deepEqual(b.losses, a.losses);
    await assert.rejects(
      trainClip(tiny(tok), tok, captionSource(new SyntheticDataset({ seed: 0, count: 4, size: 32 })), { steps: 1, batchSize: 8, lr: 1e-3 }),
      /fewer than one global batch of 8/,
    );
  });
});
