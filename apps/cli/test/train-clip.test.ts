/**
 * vitreg train --preset tiny-clip (objective clip) from the command line: a few steps write checkpoints with
 * the whole two-tower model; a run resumed from its step-2 checkpoint ends with the bytes of the uninterrupted
 * run's step-4 model (on the auto engine; --engine tfjs trains too); a caption table without
 * --tokenizer is refused naming clip.tokenizer.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lastLine, vitreg } from './helpers.js';

test('train --preset tiny-clip: checkpoints, resume to the same weights, the tokenizer refusal', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-train-clip-'));
  try {
    const cfg = join(dir, 'clip.json');
    await writeFile(
      cfg,
      JSON.stringify({
        preset: 'tiny-clip',
        data: { train_size: 48, val_size: 16 },
        train: { steps: 4, batch_size: 8, checkpoint_every: 2, keep_checkpoints: 3 },
      }),
    );
    let r = await vitreg(['train', '--config', cfg, '--engine', 'tfjs', '--no-progress', '--out', join(dir, 'tfjs')]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /engine: tfjs/);
    assert.equal(existsSync(join(dir, 'tfjs', 'checkpoints', 'step-4')), true);

    r = await vitreg(['train', '--preset', 'tiny-clip', '--data', join(dir, 'pairs.csv'), '--out', join(dir, 'csv')]);
    assert.equal(r.code, 2);
    assert.match(lastLine(r.stderr), /field "clip\.tokenizer" must name CLIP's BPE vocabulary/);

    const [a, b] = await Promise.all(
      ['a', 'b'].map((n) => vitreg(['train', '--config', cfg, '--out', join(dir, n), '--no-progress', '--engine', 'auto'])),
    );
    assert.equal(a!.code, 0, a!.stderr);
    assert.equal(b!.code, 0, b!.stderr);
    // auto: onnxruntime where onnxruntime-node loads (the clip objective trains on both engines).
    assert.match(a!.stderr, /engine: (onnxruntime|tfjs)/);
    const out = JSON.parse(lastLine(a!.stdout)) as { step: number; zeroshot_top1: number };
    assert.equal(out.step, 4);
    assert.ok(out.zeroshot_top1 >= 0 && out.zeroshot_top1 <= 1);
    // The built-in word vocabulary, for probe --task zeroshot --tokenizer.
    assert.match(await readFile(join(dir, 'a', 'tokenizer.txt'), 'utf8'), /^#version: 0\.2/);
    // Run b loses its last checkpoint and resumes from step 2.
    await rm(join(dir, 'b', 'checkpoints', 'step-4'), { recursive: true });
    r = await vitreg(['train', '--config', cfg, '--out', join(dir, 'b'), '--no-progress', '--resume']);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stderr, /resuming from step 2 of 4/);
    const model = (n: string) => readFile(join(dir, n, 'checkpoints', 'step-4', 'model.safetensors'));
    assert.ok((await model('a')).equals(await model('b')), 'the resumed run wrote the bytes of the uninterrupted one');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
