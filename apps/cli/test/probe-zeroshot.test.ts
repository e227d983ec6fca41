/**
 * `vitreg probe --task zeroshot`: a whole CLIP checkpoint (written by saveClip) and a BPE vocabulary file on
 * the synthetic shapes: results.json with top-1 / top-5, the one-line summary, and the same command again
 * reusing it; beside the class probe (results-zeroshot.json, results-class.json); the image tower of the
 * same file serves the class probe; Table 2b's command, two checkpoints (0 and 2 registers) with --task
 * class,zeroshot: sweep.csv with registers, class accuracy and zeroshot_top1 / zeroshot_top5 equal to each
 * checkpoint's own run; bad flags fail with one line naming them. Seven CLI processes (each starts tsx and a
 * backend), most of it start-up: 18 CPU-seconds (28 s wall at load average 11 on the 2 shared cores, 2026-12-05).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { initBackend } from '@vitreg/core';
import { ClipModel, getConfig, saveClip, validateClipConfig } from '@vitreg/registers';
import { nodeArgsOf } from './helpers.ts';

const here = dirname(fileURLToPath(import.meta.url));
const main = resolve(here, '../src/main.ts');

function vitreg(...args: string[]) {
  const r = spawnSync(process.execPath, [...nodeArgsOf(main), ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const tmp = await mkdtemp(join(tmpdir(), 'vitreg-zeroshot-'));
test.after(() => rm(tmp, { recursive: true, force: true }));
const vocab = join(tmp, 'bytes.txt');
const weights = join(tmp, 'clip.safetensors');
const weights0 = join(tmp, 'clip-reg0.safetensors');
await writeFile(vocab, '#version: 0.2 (no merges: one token per byte; no final newline, which open_clip would read as an empty merge)');
await initBackend('wasm', { log: () => {} });
/** A tiny whole-CLIP checkpoint (image tower with `registers` registers) written by saveClip. */
async function clipFile(path: string, registers: number, seed: number): Promise<void> {
  const model = new ClipModel(
    validateClipConfig({
      vision: getConfig('vit_micro_patch8', { proj_dim: 16, num_register_tokens: registers, img_size: 32 }),
      text: { context_length: 40, vocab_size: 514, width: 32, heads: 2, layers: 1, proj_dim: 16 },
    }),
    { seed },
  );
  await saveClip(model, path);
  model.dispose();
}
await clipFile(weights, 2, 1);
await clipFile(weights0, 0, 2);
const data = ['--data', 'synthetic', '--count', '8', '--test-count', '6', '--synthetic-size', '32', '--size', '32', '--backend', 'wasm'];
/** `vitreg probe ARGS --tokenizer <vocab> <data> --out OUT`. */
const probe = (out: string, ...args: string[]) => vitreg('probe', ...args, '--tokenizer', vocab, ...data, '--out', out);
const readJson = async (path: string) => JSON.parse(await readFile(path, 'utf8'));

test('zeroshot alone, beside the class probe, and in a sweep of two checkpoints (Table 2b)', async () => {
  const out = join(tmp, 'zs');
  const alone = ['--weights', weights, '--task', 'zeroshot', '--templates', 'simple'];
  const r = probe(out, ...alone);
  assert.equal(r.code, 0, r.stderr);
  assert.match(r.stderr, /zeroshot: top-1 \d+\.\d\d%, top-5 \d+\.\d\d%/);
  const res = await readJson(join(out, 'results.json'));
  assert.equal(res.task, 'zeroshot');
  assert.deepEqual([res.count, res.classes, res.templates], [6, 5, 7]);
  assert.ok(res.top1 >= 0 && res.top1 <= res.top5 && res.top5 <= 1);
  // The same command again: the finished result is reused (runZeroShotTask's settings match), the file as it was.
  const before = await readFile(join(out, 'results.json'), 'utf8');
  const again = probe(out, ...alone);
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, /zeroshot: already done \(.*results\.json\)\n.*zeroshot: top-1 \d+\.\d\d%, top-5/);
  assert.equal(await readFile(join(out, 'results.json'), 'utf8'), before);

  const both = join(tmp, 'both');
  const r2 = probe(both, '--weights', weights, '--task', 'class,zeroshot', '--steps', '5');
  assert.equal(r2.code, 0, r2.stderr);
  assert.equal((await readJson(join(both, 'results-zeroshot.json'))).templates, 80);
  const classOfWeights = await readJson(join(both, 'results-class.json'));

  // Table 2b's command: two checkpoints, class and zeroshot; sweep.csv holds both tasks' columns per checkpoint.
  const alone0 = join(tmp, 'zs0');
  const r3 = probe(alone0, '--weights', weights0, '--task', 'zeroshot');
  assert.equal(r3.code, 0, r3.stderr);
  const sweep = join(tmp, 'sweep');
  const r4 = probe(sweep, '--weights', weights0, '--weights', weights, '--task', 'class,zeroshot', '--steps', '5');
  assert.equal(r4.code, 0, r4.stderr);
  const [head, ...lines] = (await readFile(join(sweep, 'sweep.csv'), 'utf8')).trim().split('\n');
  const cols = head!.split(',');
  for (const c of ['checkpoint', 'registers', 'zeroshot_top1', 'zeroshot_top5', 'accuracy'])
    assert.ok(cols.includes(c), `sweep.csv: no ${c} in ${head}`);
  const rows = lines.map((l) => Object.fromEntries(l.split(',').map((v, i) => [cols[i], v])));
  assert.deepEqual(
    rows.map((r) => [r.checkpoint, Number(r.registers)]),
    [
      [weights0, 0],
      [weights, 2],
    ],
  );
  const single = [await readJson(join(alone0, 'results.json')), await readJson(join(both, 'results-zeroshot.json'))];
  console.log(`# zero-shot top-1 of the two checkpoints alone: ${single.map((s) => s.top1).join(', ')}`);
  rows.forEach((r, i) => {
    assert.deepEqual(
      [Number(r.zeroshot_top1), Number(r.zeroshot_top5)],
      [single[i].top1, single[i].top5],
      `${r.checkpoint}: sweep vs its own run`,
    );
  });
  // The class probe's accuracy in the sweep is the checkpoint's own run's (same steps, data and seed).
  assert.equal(Number(rows[1]!.accuracy), classOfWeights.accuracy, `${weights}: class accuracy, sweep vs its own run`);
});

test('zeroshot flags: errors name them', async () => {
  const r = vitreg('probe', '--weights', weights, '--task', 'zeroshot', ...data, '--out', join(tmp, 'x'));
  assert.notEqual(r.code, 0);
  assert.match(r.stderr, /--task zeroshot needs --tokenizer FILE/);
  const classes = join(tmp, 'classes.txt');
  await writeFile(classes, 'a\nb\n');
  const r2 = probe(join(tmp, 'y'), '--weights', weights, '--task', 'zeroshot', '--classes', classes);
  assert.notEqual(r2.code, 0);
  assert.match(r2.stderr, /5 classes, the class names 2/);
});
