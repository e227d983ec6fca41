/**
 * Zero-shot classification (zeroshot.ts): the classifier is the normalised mean of each class's normalised
 * template embeddings (computed here one text at a time) whatever the class batching; 100 x cosine logits;
 * top-1 / top-5 with ties to the lower class; an end-to-end run on a tiny random CLIP scores 1.0 against the
 * labels its own classifier picks and less against shifted ones; templates and class files; the built-in
 * ImageNet metadata.
 */
import { before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as tf from '@tensorflow/tfjs-core';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initBackend, readSafetensors, Rng, SyntheticDataset, toFloat32 } from '@vitreg/core';
import { ClipModel, ClipTokenizer, getConfig, l2Normalize, loadClip, validateClipConfig } from '@vitreg/registers';
import {
  buildZeroShotClassifier,
  fillTemplate,
  IMAGENET_CLASSNAMES,
  OPENAI_IMAGENET_TEMPLATES,
  parseLines,
  runZeroShot,
  SIMPLE_IMAGENET_TEMPLATES,
  topKAccuracy,
  zeroShotEval,
  zeroShotLogits,
} from '../src/index.ts';

const tokenizer = new ClipTokenizer('#version: 0.2 (no merges: one token per byte)\n', { contextLength: 40 });

function tinyClip(): ClipModel {
  return new ClipModel(
    validateClipConfig({
      vision: getConfig('vit_micro_patch8', { proj_dim: 16, num_register_tokens: 0 }),
      text: { context_length: 40, vocab_size: tokenizer.vocabSize, width: 32, heads: 2, layers: 1, proj_dim: 16 },
    }),
    { seed: 1 },
  );
}

describe('zero-shot classification', () => {
  before(async () => {
    await initBackend('wasm', { log: () => {} });
  });

  test("the classifier and logits equal open_clip's build_zero_shot_classifier (fixture)", async () => {
    const here = dirname(fileURLToPath(import.meta.url));
    const dir = join(here, 'fixtures', 'zeroshot');
    const { tensors, metadata } = await readSafetensors(join(dir, 'zeroshot.reference.safetensors'));
    const classes = JSON.parse(metadata.classes!) as string[];
    const templates = JSON.parse(metadata.templates!) as string[];
    const model = await loadClip(join(dir, 'zeroshot_clip.safetensors'), { vision: { num_heads: 3 }, text: { heads: 2 } });
    const tok = await ClipTokenizer.fromFile(join(here, '..', '..', 'registers', 'test', 'fixtures', 'clip-text', 'bpe_tiny.txt.gz'), {
      contextLength: 24,
    });
    const W = buildZeroShotClassifier(model, tok, classes, templates);
    const ref = toFloat32(tensors.classifier!); // [E, C]
    const C = classes.length;
    for (let c = 0; c < C; c++)
      for (let e = 0; e < 16; e++) assert.ok(Math.abs(W[c * 16 + e]! - ref[e * C + c]!) < 1e-4, `classifier[${e}, ${c}]`);
    const input = tensors.input_nhwc!;
    const x = tf.tensor4d(toFloat32(input), input.shape as [number, number, number, number]);
    const f = model.encodeImage(x);
    const logits = zeroShotLogits(Float32Array.from(f.dataSync()), W, 4, 16);
    const want = toFloat32(tensors.logits!);
    logits.forEach((v, i) => assert.ok(Math.abs(v - want[i]!) <= 1e-3 + 1e-4 * Math.abs(want[i]!), `logits[${i}]: ${v} vs ${want[i]}`));
    tf.dispose([x, f]);
    model.dispose();
  });

  test('the classifier: normalised mean of normalised template embeddings, independent of class batching', () => {
    const model = tinyClip();
    const classes = ['circle', 'square', 'triangle'];
    const templates = ['a photo of a {}.', 'a {} shape', '{}'];
    const W = buildZeroShotClassifier(model, tokenizer, classes, templates);
    const W1 = buildZeroShotClassifier(model, tokenizer, classes, templates, { classesPerBatch: 1 });
    classes.forEach((c, k) => {
      const manual = tf.tidy(() => {
        const embs = templates.map((t) => l2Normalize(model.encodeText(tokenizer.tokenize([fillTemplate(t, c)], 40), 1)));
        return l2Normalize(tf.mean(tf.concat(embs, 0), 0, true) as tf.Tensor2D);
      });
      const m = manual.dataSync();
      for (let j = 0; j < 16; j++) {
        assert.ok(Math.abs(W[k * 16 + j]! - m[j]!) < 1e-5, `class ${c} [${j}]`);
        assert.ok(Math.abs(W1[k * 16 + j]! - m[j]!) < 1e-5, `class ${c} [${j}], one class per batch`);
      }
      manual.dispose();
    });
    // Logits: 100 x cosine.
    const img = Float32Array.from({ length: 2 * 16 }, (_, i) => Math.sin(i + 1) * 3);
    const logits = zeroShotLogits(img, W, 2, 16);
    const n0 = Math.hypot(...img.subarray(0, 16));
    let dot = 0;
    for (let j = 0; j < 16; j++) dot += (img[j]! / n0) * W[16 + j]!;
    assert.ok(Math.abs(logits[1]! - 100 * dot) < 1e-3);
    model.dispose();
  });

  test('top-1 / top-5, ties to the lower class', () => {
    const logits = Float32Array.from([5, 1, 1, 0, 0, 0, 9, 0, 1, 1, 2, 3, 4, 5, 6, 7]);
    // 2 images x 8 classes
    const r = topKAccuracy(logits, [6, 1], 8);
    assert.equal(r.top1, 0.5);
    assert.equal(r.top5, 0.5);
    assert.deepEqual(topKAccuracy(Float32Array.from([1, 1, 1, 1, 1, 1, 1]), [4], 7), { top1: 0, top5: 1 });
    assert.deepEqual(topKAccuracy(Float32Array.from([1, 1, 1, 1, 1, 1, 1]), [5], 7), { top1: 0, top5: 0 });
  });

  test('end to end on a tiny random CLIP: its own picks score 1, shifted labels less', async () => {
    const model = tinyClip();
    const classes = ['circle', 'square', 'triangle', 'cross', 'ring', 'star'];
    const templates = OPENAI_IMAGENET_TEMPLATES.slice(0, 4);
    const rng = new Rng(2);
    const images = Float32Array.from({ length: 6 * 32 * 32 * 3 }, () => rng.normal(0, 1));
    const W = buildZeroShotClassifier(model, tokenizer, classes, templates);
    const x = tf.tensor4d(images, [6, 32, 32, 3]);
    const f = model.encodeImage(x);
    const logits = zeroShotLogits(Float32Array.from(f.dataSync()), W, 6, 16);
    tf.dispose([x, f]);
    const picks = Array.from({ length: 6 }, (_, i) => {
      const row = Array.from(logits.subarray(i * 6, i * 6 + 6));
      return row.indexOf(Math.max(...row));
    });
    const own = await zeroShotEval(model, tokenizer, classes, templates, [{ images, count: 6, size: 32, labels: picks }]);
    assert.equal(own.top1, 1);
    assert.equal(own.top5, 1);
    assert.deepEqual([own.count, own.classes, own.templates], [6, 6, 4]);
    const shifted = await zeroShotEval(model, tokenizer, classes, templates, [
      { images, count: 6, size: 32, labels: picks.map((p) => (p + 1) % 6) },
    ]);
    assert.equal(shifted.top1, 0);
    await assert.rejects(
      zeroShotEval(model, tokenizer, classes, templates, [{ images, count: 6, size: 32, labels: [0, 1, 2, 3, 4, 6] }]),
      /label 6 is outside the 6 class names/,
    );
    model.dispose();
  });

  test("runZeroShot on a dataset: CLIP eval transform, the data's class names, every item", async () => {
    const model = tinyClip();
    const dataset = new SyntheticDataset({ seed: 0, count: 7, size: 48, split: 'val' });
    const r = await runZeroShot(model, tokenizer, { dataset }, { templates: ['a {}'], batchSize: 3 });
    assert.deepEqual([r.count, r.classes, r.templates], [7, 5, 1]);
    assert.ok(r.top1 >= 0 && r.top1 <= r.top5 && r.top5 <= 1);
    await assert.rejects(
      runZeroShot(model, tokenizer, { dataset }, { classNames: ['a', 'b'], templates: ['{}'] }),
      /5 classes, the class names 2/,
    );
    model.dispose();
  });

  test('templates, class files and the built-in metadata', () => {
    assert.equal(fillTemplate('a photo of a {}.', 'dog'), 'a photo of a dog.');
    assert.equal(fillTemplate('{{literal}} {}', 'x'), '{literal} x');
    assert.throws(() => fillTemplate('no slot', 'x'), /exactly one "\{\}"/);
    assert.deepEqual(parseLines('# classes\ncat\n\n dog \r\n', 'c.txt', 'class names'), ['cat', 'dog']);
    assert.throws(() => parseLines('\n# only\n', 'c.txt', 'class names'), /c\.txt: no class names/);
    assert.equal(IMAGENET_CLASSNAMES.length, 1000);
    assert.equal(IMAGENET_CLASSNAMES[0], 'tench');
    assert.equal(IMAGENET_CLASSNAMES[999], 'toilet paper');
    assert.equal(OPENAI_IMAGENET_TEMPLATES.length, 80);
    assert.equal(OPENAI_IMAGENET_TEMPLATES[0], 'a bad photo of a {}.');
    // Every entry: SHA-256 of the list joined by newlines, computed in Python from open_clip's
    // src/open_clip/zero_shot_metadata.py (commits 830197e and 89fb801 hold the same lists; each template called with "{}").
    const sha = (list: readonly string[]) => createHash('sha256').update(list.join('\n')).digest('hex');
    assert.equal(sha(IMAGENET_CLASSNAMES), '571ae1c583b4be7da87519494c52bf405a46af05d5815627c7a0dee997068b60');
    assert.equal(sha(OPENAI_IMAGENET_TEMPLATES), '4f976686fb651bb5803d4689dcd849f75efe0ef19a3c801355bc9a6f03c8a5af');
    assert.equal(SIMPLE_IMAGENET_TEMPLATES.length, 7);
    assert.equal(sha(SIMPLE_IMAGENET_TEMPLATES), '6ef3883987d224b7949da69fe0b615af152e1560eaac4c5c38555e50c882d415');
  });
});
