/**
 * runProbeSweep (probe-sweep.ts) and runZeroShotTask (zeroshot-run.ts) without the CLI: two tiny CLIP
 * checkpoints (0 and 2 registers) through zero-shot and the class probe: each checkpoint's results files
 * in its folder, sweep.csv / sweep.json / sweep.png with one row per checkpoint whose columns are the
 * tasks' own reports, each model opened once and disposed; the same sweep again reuses every result
 * (zero-shot's too) and gives the same rows; zero-shot with other settings is a SettingsMismatchError, a
 * missing checkpoint and a tokenizer that does not fit the text tower are ZeroShotInputErrors naming them.
 * About 3 CPU-seconds (2.5 s user + 0.3 s sys; 16 s wall at load average 13, 2026-12-05).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { checkpointNames, initBackend, SettingsMismatchError } from '@vitreg/core';
import { ClipModel, getConfig, saveClip, validateClipConfig, VisionTransformer } from '@vitreg/registers';
import {
  openProbeSource,
  runProbeSweep,
  runZeroShotTask,
  ZeroShotInputError,
  type ProbeReport,
  type ProbeSweepResult,
  type SweepTask,
  type ZeroShotTaskReport,
} from '../src/index.ts';

await initBackend('wasm', { log: () => {} });
const tmp = await mkdtemp(join(tmpdir(), 'vitreg-probe-sweep-'));
test.after(() => rm(tmp, { recursive: true, force: true }));
const vocab = join(tmp, 'bytes.txt');
await writeFile(vocab, '#version: 0.2 (no merges: one token per byte)');
const weights = [join(tmp, 'reg0', 'clip.safetensors'), join(tmp, 'reg2', 'clip.safetensors')];
for (const [i, registers] of [0, 2].entries()) {
  const clip = new ClipModel(
    validateClipConfig({
      vision: getConfig('vit_micro_patch8', { proj_dim: 16, num_register_tokens: registers, img_size: 32 }),
      text: { context_length: 40, vocab_size: 514, width: 32, heads: 2, layers: 1, proj_dim: 16 },
    }),
    { seed: i + 1 },
  );
  await mkdir(join(tmp, `reg${registers}`));
  await saveClip(clip, weights[i]!);
  clip.dispose();
}
const { train, test: testPart } = openProbeSource('synthetic', { count: 8, testCount: 6, syntheticSize: 32 });
const tasks: SweepTask[] = ['class', 'zeroshot'];
const parts = new Map<SweepTask, { train: typeof train; test: typeof testPart }>(tasks.map((t) => [t, { train, test: testPart }]));
const data = new Map<SweepTask, string>(tasks.map((t) => [t, 'synthetic']));

async function sweep(outDir: string) {
  const results: ProbeSweepResult[] = [];
  const opened: string[] = [];
  const disposed: string[] = [];
  const { rows } = await runProbeSweep({
    weights,
    outDir,
    tasks,
    parts,
    data,
    async openModel(w, i) {
      opened.push(w);
      const model = new VisionTransformer(getConfig('vit_micro_patch8', { num_register_tokens: 2 * i, img_size: 32 }), { seed: i });
      return { model, dispose: () => (disposed.push(w), model.dispose()) };
    },
    probe: { size: 32, steps: 5, progress: false },
    zeroShot: { tokenizer: vocab, templates: 'simple' },
    onResult: (r) => results.push(r),
  });
  return { rows, results, opened, disposed };
}

test('runProbeSweep: zero-shot and class over two checkpoints, the sweep files, every result reused on the second run', async () => {
  const out = join(tmp, 'sweep');
  const first = await sweep(out);
  assert.deepEqual(first.opened, weights);
  assert.deepEqual(first.disposed, weights);
  assert.deepEqual(
    first.results.map((r) => [r.task, r.weights, r.reused]),
    [
      ['zeroshot', weights[0], false],
      ['zeroshot', weights[1], false],
      ['class', weights[0], false],
      ['class', weights[1], false],
    ],
  );
  const dirs = checkpointNames(weights);
  for (const r of first.results) assert.equal(r.file, join(out, dirs[r.index]!, `results-${r.task}.json`));
  for (const f of ['sweep.csv', 'sweep.json', 'sweep.png']) assert.ok(existsSync(join(out, f)), f);
  // Each row: the checkpoint, the image tower's registers, zero-shot's and the class probe's own numbers.
  const zs = first.results.filter((r) => r.task === 'zeroshot').map((r) => r.report as ZeroShotTaskReport);
  const cls = first.results.filter((r) => r.task === 'class').map((r) => r.report as ProbeReport);
  assert.deepEqual(
    first.rows.map((r) => [r.checkpoint, r.registers, r.zeroshot_top1, r.zeroshot_top5, r.accuracy]),
    weights.map((w, i) => [w, 2 * i, zs[i]!.top1, zs[i]!.top5, cls[i]!.accuracy]),
  );
  const saved = JSON.parse(await readFile(first.results[0]!.file, 'utf8')) as ZeroShotTaskReport;
  assert.deepEqual([saved.task, saved.templates, saved.count, saved.registers], ['zeroshot', 7, 6, 0]);
  assert.deepEqual(saved.settings, {
    weights: weights[0],
    task: 'zeroshot',
    data: 'synthetic',
    size: 32,
    seed: 0,
    tokenizer: vocab,
    classes: null,
    templates: 'simple',
    quickGelu: false,
  });

  const before = await Promise.all(first.results.map((r) => readFile(r.file, 'utf8')));
  const again = await sweep(out);
  assert.deepEqual(
    again.results.map((r) => r.reused),
    [true, true, true, true],
  );
  assert.deepEqual(again.rows, first.rows);
  assert.deepEqual(await Promise.all(again.results.map((r) => readFile(r.file, 'utf8'))), before, 'results files untouched');
});

test('runZeroShotTask: other settings refused; a missing checkpoint and a tokenizer of another vocabulary named', async () => {
  const out = join(tmp, 'zs');
  await mkdir(out);
  const o = { file: join(out, 'results.json'), settings: { data: 'synthetic' }, tokenizer: vocab, data: 'synthetic', size: 32 };
  const first = await runZeroShotTask(weights[0]!, testPart, { ...o, templates: 'simple' });
  assert.equal(first.reused, false);
  assert.equal((await runZeroShotTask(weights[0]!, testPart, { ...o, templates: 'simple' })).reused, true);
  await assert.rejects(runZeroShotTask(weights[0]!, testPart, o), (err: Error) => {
    assert.ok(err instanceof SettingsMismatchError);
    assert.match(err.message, /templates "simple", not "openai"/);
    return true;
  });
  // Another input size is another result (its settings record the size), not "already done".
  await assert.rejects(runZeroShotTask(weights[0]!, testPart, { ...o, templates: 'simple', size: 48 }), SettingsMismatchError);
  const missing = join(tmp, 'none.safetensors');
  await assert.rejects(runZeroShotTask(missing, testPart, { ...o, file: join(out, 'a.json') }), (err: Error) => {
    assert.ok(err instanceof ZeroShotInputError && err.input === 'weights', String(err));
    assert.ok(err.message.startsWith(`${missing}: `), err.message);
    return true;
  });
  const small = join(tmp, 'small.txt');
  await writeFile(small, '#version: 0.2\na b\n');
  await assert.rejects(runZeroShotTask(weights[0]!, testPart, { ...o, tokenizer: small, file: join(out, 'b.json') }), (err: Error) => {
    assert.ok(err instanceof ZeroShotInputError && err.input === 'vocabulary', String(err));
    assert.match(err.message, /small\.txt: a vocabulary of \d+ tokens, the text tower of .*clip\.safetensors has 514/);
    return true;
  });
});
