import { test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { encodePng, readSafetensors, SyntheticDataset } from '@vitreg/core';
import { validateTrainConfig } from '@vitreg/trainer';
import { lastLine, refusedInProcess, vitreg } from './helpers.js';

/**
 * `vitreg train ...args` run in-process, refused: the message main prints as its one stderr line
 * (`vitreg train: <message>`, exit code 2; the first case below checks that path in a process of its own).
 */
async function refused(args: string[]): Promise<string> {
  const r = await refusedInProcess(['train', ...args]);
  assert.equal(r.code, 2, r.stderr);
  return r.stderr.replace(/^vitreg train: /, '').trimEnd();
}

test('train --list-presets names the CPU presets and the paper recipes', async () => {
  const r = await vitreg(['train', '--list-presets']);
  assert.equal(r.code, 0, r.stderr);
  const names = r.stdout
    .trim()
    .split('\n')
    .map((l) => l.split(/\s+/)[0]);
  assert.deepEqual(names, [
    'tiny-supervised',
    'tiny-dino',
    'dinov2-l14-reg4',
    'deit3-b16-in1k-reg4',
    'deit3-b16-in22k-reg4',
    'tiny-clip',
    'openclip-b16-reg4',
    'dinov2-l14',
    'deit3-b16-in1k',
    'openclip-b16',
    'deit3-b16-in22k',
    'deit3-b16-reg4',
    'deit3-b16',
  ]);
  assert.match(r.stdout, /deit3-b16-reg4 +the same as deit3-b16-in1k-reg4/);
});

test('train: bad configs and flags fail before any work, naming the field and the allowed values', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-train-bad-'));
  try {
    const file = join(dir, 'run.json');
    await writeFile(file, JSON.stringify({ objective: 'supervised', optim: { base_lr: 'fast' } }));
    const r = await vitreg(['train', '--config', file, '--out', join(dir, 'out')]);
    assert.equal(r.code, 2);
    assert.match(lastLine(r.stderr), /run\.json: field "optim\.base_lr" must be a number >= 0, got "fast"/);
    assert.doesNotMatch(r.stderr, /backend/, 'the backend must not start for a bad config');
    assert.equal(existsSync(join(dir, 'out')), false);

    // The other refusals in-process (each a process of its own cost 1.5 CPU-seconds).
    await writeFile(file, JSON.stringify({ objective: 'mae' }));
    assert.match(await refused(['--config', file]), /field "objective" must be one of supervised, dino, clip, got "mae"/);

    await writeFile(file, '{"objective": ');
    assert.match(await refused(['--config', file]), /run\.json is not valid JSON/);

    assert.match(await refused(['--preset', 'huge']), /--preset: expected one of tiny-supervised, tiny-dino, dinov2-l14-reg4/);

    // A paper recipe names its data.
    assert.match(
      await refused(['--preset', 'dinov2-l14-reg4', '--out', join(dir, 'paper')]),
      /data: no data source; give --data FOLDER or a file list/,
    );

    assert.match(await refused(['--preset', 'tiny-supervised', '--registers', '17']), /num_register_tokens.*between 0 and 16/);

    assert.match(await refused(['--preset', 'tiny-supervised', '--data', join(dir, 'nowhere')]), /nowhere" is not a folder/);

    assert.match(await refused([]), /expected --preset NAME or --config FILE\.json/);

    assert.match(await refused(['--preset', 'tiny-supervised', '--workers', '0']), /--workers: expected an integer >= 1, got "0"/);
    assert.match(
      await refused(['--preset', 'tiny-supervised', '--workers', '65']),
      /--workers: expected an integer from 1 to 64, got "65"/,
    );
    // Training threads of one process cannot share ONNX Runtime's WebGPU provider.
    assert.match(
      await refused(['--preset', 'tiny-supervised', '--workers', '2', '--device', 'webgpu']),
      /--workers 2 with --device webgpu: ONNX Runtime's WebGPU provider keeps one device context per process/,
    );
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('train: a short run writes config, metrics, checkpoint and eval; vitreg features reads its weights', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-train-run-'));
  try {
    const out = join(dir, 'run');
    const cfg = join(dir, 'tiny.json');
    await writeFile(cfg, JSON.stringify({ preset: 'tiny-supervised', data: { train_size: 16, val_size: 8 }, train: { batch_size: 4 } }));
    const r = await vitreg([
      'train',
      '--config',
      cfg,
      '--steps',
      '3',
      '--registers',
      '2',
      '--seed',
      '7',
      '--out',
      out,
      '--backend',
      'wasm',
      '--no-progress',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
    assert.equal(summary.step, 3);
    assert.equal(summary.num_classes, 5);
    assert.equal(typeof summary.val_accuracy, 'number');
    const config = JSON.parse(await readFile(join(out, 'config.json'), 'utf8'));
    assert.deepEqual([config.train.steps, config.train.seed, config.model.num_register_tokens, config.data.source], [3, 7, 2, 'synthetic']);
    const lines = (await readFile(join(out, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.deepEqual(
      lines.map((l) => l.step),
      [1, 2, 3],
    );
    for (const key of ['loss', 'lr', 'wd', 'grad_norm', 'images_per_s', 'rss_mb', 'tf_tensors', 'tf_mb'])
      assert.equal(typeof lines[2][key], 'number', key);
    const evalJson = JSON.parse(await readFile(join(out, 'eval.json'), 'utf8'));
    assert.equal(evalJson.num_classes, 5);
    const weights = join(out, 'checkpoints', 'step-3', 'model.safetensors');
    assert.ok(existsSync(join(out, 'checkpoints', 'step-3', 'state.json')));

    const item = await new SyntheticDataset({ seed: 1, count: 1, size: 32 }).get(0);
    const image = join(dir, 'shape.png');
    await writeFile(image, await encodePng(item.image, item.width, item.height));
    const f = await vitreg([
      'features',
      '--weights',
      weights,
      image,
      '--size',
      '32',
      '--out',
      join(dir, 'f.safetensors'),
      '--backend',
      'wasm',
    ]);
    assert.equal(f.code, 0, f.stderr);
    const { tensors } = await readSafetensors(join(dir, 'f.safetensors'));
    assert.deepEqual(tensors.registers!.shape, [1, 2, 64]);

    // --resume with only --out continues the run from its config.json (here: already complete).
    const again = await vitreg(['train', '--resume', '--out', out, '--backend', 'wasm', '--no-progress']);
    assert.equal(again.code, 0, again.stderr);
    assert.equal(JSON.parse(again.stdout.trim().split('\n').pop()!).step, 3);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test("train --workers 2: two threads train one run; rank 0 writes metrics, eval and a checkpoint with the job's sampler position", async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-train-workers-'));
  try {
    const out = join(dir, 'run');
    const cfg = join(dir, 'tiny.json');
    await writeFile(cfg, JSON.stringify({ preset: 'tiny-supervised', data: { train_size: 16, val_size: 8 }, train: { batch_size: 2 } }));
    const r = await vitreg([
      'train',
      '--config',
      cfg,
      '--steps',
      '2',
      '--workers',
      '2',
      '--out',
      out,
      '--backend',
      'wasm',
      '--no-progress',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
    assert.equal(summary.step, 2);
    assert.equal(typeof summary.val_accuracy, 'number');
    const lines = (await readFile(join(out, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.deepEqual(
      lines.map((l) => l.step),
      [1, 2],
    );
    const state = JSON.parse(await readFile(join(out, 'checkpoints', 'step-2', 'state.json'), 'utf8'));
    assert.equal(state.world_size, 2);
    // 2 steps x 2 ranks x 2 images.
    assert.equal(state.cursor, 8);
    assert.ok(existsSync(join(out, 'eval.json')));
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('train --nodes 2: a local cluster job (coordinator + 2 worker processes) writes the run folder, logs and per-rank files; bad cluster flags are one line', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-train-nodes-'));
  try {
    const out = join(dir, 'run');
    const cfg = join(dir, 'tiny.json');
    await writeFile(
      cfg,
      JSON.stringify({ preset: 'tiny-supervised', data: { train_size: 16, val_size: 8 }, train: { batch_size: 2, checkpoint_every: 0 } }),
    );
    const r = await vitreg([
      'train',
      '--config',
      cfg,
      '--steps',
      '2',
      '--nodes',
      '2',
      '--out',
      out,
      '--backend',
      'wasm',
      '--no-progress',
      '--collective-timeout-ms',
      '120000',
    ]);
    assert.equal(r.code, 0, r.stderr);
    const summary = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<string, unknown>;
    assert.equal(summary.step, 2);
    assert.equal(typeof summary.val_accuracy, 'number');
    const lines = (await readFile(join(out, 'metrics.jsonl'), 'utf8'))
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l));
    assert.deepEqual(
      lines.map((l) => [l.step, l.world_size]),
      [
        [1, 2],
        [2, 2],
      ],
    );
    for (const f of [
      'logs/coordinator.log',
      'logs/coordinator.jsonl',
      'logs/worker-0.log',
      'logs/worker-1.log',
      'ranks/worker-0.jsonl',
      'ranks/worker-1.jsonl',
      'checkpoints/step-2/model.safetensors',
    ]) {
      assert.ok(existsSync(join(out, f)), f);
    }
    // --collective-timeout-ms reached every worker
    for (const w of [0, 1]) assert.match(await readFile(join(out, `logs/worker-${w}.log`), 'utf8'), /collective timeout 120 s\)/);
    const bad = await vitreg(['train', '--config', cfg, '--nodes', '2', '--transport', 'udp', '--out', out]);
    assert.equal(bad.code, 2);
    assert.match(bad.stderr, /--transport: expected tcp or grpc, got "udp"/);
    const many = await vitreg([
      'train',
      '--config',
      cfg,
      '--nodes',
      '2',
      '--min-workers',
      '3',
      '--collective-timeout-ms',
      '0',
      '--out',
      out,
    ]);
    assert.equal(many.code, 2);
    assert.match(many.stderr, /--min-workers: 3 is more than --nodes 2/);
    assert.match(many.stderr, /--collective-timeout-ms/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('train --print-config: the resolved config, preset and flags applied, as JSON; nothing trained', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-print-'));
  try {
    const r = await vitreg([
      'train',
      '--preset',
      'dinov2-l14-reg4',
      '--steps',
      '7',
      '--registers',
      '2',
      '--print-config',
      '--out',
      join(dir, 'run'),
    ]);
    assert.equal(r.code, 0, r.stderr);
    const expected = validateTrainConfig({ preset: 'dinov2-l14-reg4', model: { num_register_tokens: 2 }, train: { steps: 7 } });
    assert.deepEqual(JSON.parse(r.stdout), JSON.parse(JSON.stringify(expected)));
    assert.ok(!existsSync(join(dir, 'run')), 'a run folder was created');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});

test('train --resume over a run whose checkpoints cannot be listed is an error naming the folder, not a fresh start', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-unreadable-'));
  try {
    const out = join(dir, 'run');
    await mkdir(out);
    // A file where the checkpoints folder should be: listing it fails (ENOTDIR), even as root.
    await writeFile(join(out, 'checkpoints'), 'not a folder');
    const r = await vitreg([
      'train',
      '--preset',
      'tiny-supervised',
      '--steps',
      '1',
      '--resume',
      '--out',
      out,
      '--backend',
      'wasm',
      '--no-progress',
    ]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /checkpoints: cannot list the checkpoints \(ENOTDIR\)/);
    assert.ok(!existsSync(join(out, 'metrics.jsonl')), 'a fresh run started');
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
