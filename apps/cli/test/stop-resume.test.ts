/**
 * vitreg train stopped and resumed as a user does it (issue 23): SIGINT at a random step of a
 * single-process run (exit 130, one line, a checkpoint) and SIGTERM to a `--nodes 2` cluster job (exit
 * 143, every worker after the same step); the same command again continues ("resuming from step N of
 * M", its progress counting absolute steps) and ends with the weights of an uninterrupted run. Also:
 * another run's folder is refused naming the field and the ways out, --resume on an empty folder says
 * it starts fresh, --restart moves the old run aside, and a second Ctrl-C exits at once (a single
 * process, and a `--nodes 2` job: every process of the job killed, exit 130).
 */
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { lastLine, MAIN, nodeArgsOf, ROOT, type RunResult, vitreg } from './helpers.js';

let dir = '';
let config = '';
const STEPS = 40;
before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'vitreg-stop-resume-'));
  config = join(dir, 'run.json');
  await writeFile(
    config,
    JSON.stringify({
      preset: 'tiny-supervised',
      model: { drop_path_batch_subset: false },
      data: { train_size: 32, val_size: 8 },
      train: { steps: STEPS, batch_size: 4, eval_every: 0, checkpoint_every: 0 },
    }),
  );
});
after(async () => {
  await rm(dir, { recursive: true, force: true });
});

/**
 * `vitreg ...args`, sending the first of `signals` once rank 0's metrics reach `atStep`, and each next
 * one once the run said it is stopping (signals sent at once may arrive as one).
 */
function interrupted(args: string[], out: string, atStep: number, signals: NodeJS.Signals[]): Promise<RunResult> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [...nodeArgsOf(MAIN), ...args], {
      cwd: ROOT,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '';
    let stderr = '';
    child.stdout.on('data', (d) => (stdout += d));
    child.stderr.on('data', (d) => {
      stderr += d;
      if (signals.length > 0 && sent && /stopping \(/.test(stderr)) child.kill(signals.shift()!);
    });
    let sent = false;
    const poll = setInterval(() => {
      const path = join(out, 'metrics.jsonl');
      if (!existsSync(path)) return;
      readFile(path, 'utf8').then((t) => {
        if (sent || t.trim().split('\n').filter(Boolean).length < atStep) return;
        clearInterval(poll);
        sent = true;
        child.kill(signals.shift()!);
      }, reject);
    }, 50);
    child.on('error', reject);
    child.on('close', (code) => {
      clearInterval(poll);
      resolve({ code, stdout, stderr });
    });
  });
}

/** The final checkpoint's weights, optimiser and heads, byte for byte. */
async function finalBytes(out: string): Promise<Buffer[]> {
  const last = readdirSync(join(out, 'checkpoints'))
    .filter((d) => d.startsWith('step-'))
    .sort((a, b) => Number(a.slice(5)) - Number(b.slice(5)))
    .pop()!;
  return Promise.all(
    ['model.safetensors', 'optimizer.safetensors', 'heads.safetensors'].map((f) => readFile(join(out, 'checkpoints', last, f))),
  );
}

const train = (out: string, ...more: string[]) => ['train', '--config', config, '--out', out, '--backend', 'wasm', ...more];

test('Ctrl-C (SIGINT) at a random step: a checkpoint, one line, exit 130; the same command resumes to the uninterrupted weights', async () => {
  const straight = join(dir, 'straight');
  const s = await vitreg(train(straight, '--no-progress'));
  assert.equal(s.code, 0, s.stderr);
  const out = join(dir, 'stopped');
  const at = 3 + Math.floor(Math.random() * (STEPS - 10));
  const r = await interrupted(train(out), out, at, ['SIGINT']);
  assert.equal(r.code, 130, r.stderr);
  const m = /^vitreg train: interrupted at step (\d+) of 40; checkpoint written \((.*)\); run the same command to continue$/.exec(
    lastLine(r.stderr),
  );
  assert.ok(m, r.stderr);
  const n = Number(m[1]);
  assert.ok(n >= at && n < STEPS, `stopped at ${n} after a signal at ${at}`);
  assert.equal(m[2], join(out, 'checkpoints', `step-${n}`));
  assert.ok(existsSync(join(out, 'checkpoints', `step-${n}`, 'model.safetensors')));
  // Its progress ends "stopped at n/40", never "done".
  assert.match(r.stderr, new RegExp(`^train: stopped at ${n}/${STEPS} in `, 'm'));
  assert.doesNotMatch(r.stderr, /^train: done /m);
  assert.match(
    r.stderr,
    /vitreg train: SIGINT: stopping \(the step in progress finishes, then a checkpoint is written; Ctrl-C again exits at once\)/,
  );

  const again = await vitreg(train(out));
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, new RegExp(`resuming from step ${n} of ${STEPS} \\(checkpoint ${join(out, 'checkpoints', `step-${n}`)}\\)`));
  // Its progress counts absolute steps: the first line is past step n, of 40 (not k/(40 - n)).
  const lines = again.stderr.split('\n').filter((l) => l.startsWith('train: '));
  const first = /^train: (?:done )?(\d+)\/(\d+) /.exec(lines[0] ?? '');
  assert.ok(first && Number(first[1]) > n && Number(first[2]) === STEPS, `first progress line after resuming at ${n}: ${lines[0]}`);
  assert.match(lines.at(-1)!, new RegExp(`^train: done ${STEPS}/${STEPS} in `));
  assert.equal(JSON.parse(again.stdout.trim()).step, STEPS);
  const [a, b] = [await finalBytes(straight), await finalBytes(out)];
  a.forEach((x, i) => assert.ok(x.equals(b[i]!), `final checkpoint file ${i} differs from the uninterrupted run`));

  // Another config on the same folder: refused before any work, naming the field and the ways out.
  const other = await vitreg(train(out, '--seed', '4'));
  assert.equal(other.code, 2);
  assert.equal(
    lastLine(other.stderr),
    `vitreg train: --out ${out} holds the checkpoints of another run: field "train.seed" is 0 there and 4 in this one; ` +
      `to continue that run use its config (vitreg train --resume --out ${out}), to start this one there use --restart ` +
      '(the old files are moved aside, not deleted), or give another --out',
  );
  assert.doesNotMatch(other.stderr, /backend/);
  // --restart: the old run is moved aside, not deleted.
  const restarted = await vitreg(train(out, '--seed', '4', '--steps', '2', '--restart', '--no-progress'));
  assert.equal(restarted.code, 0, restarted.stderr);
  const aside = readdirSync(out).filter((f) => f.startsWith('previous-'));
  assert.equal(aside.length, 1);
  assert.ok(existsSync(join(out, aside[0]!, 'checkpoints', `step-${STEPS}`)));
  assert.ok(existsSync(join(out, 'checkpoints', 'step-2')));
});

test('--resume on an empty folder says it starts fresh; a second Ctrl-C exits at once', async () => {
  const fresh = await vitreg(train(join(dir, 'fresh'), '--steps', '1', '--resume', '--no-progress'));
  assert.equal(fresh.code, 0, fresh.stderr);
  assert.match(fresh.stderr, /no checkpoint to resume from in .*fresh\/checkpoints: starting fresh/);
  const out = join(dir, 'twice');
  const r = await interrupted(train(out), out, 2, ['SIGINT', 'SIGINT']);
  assert.equal(r.code, 130, r.stderr);
  assert.doesNotMatch(r.stderr, /interrupted at step/);
});

test('SIGTERM to `vitreg train --nodes 2`: every worker stops after the same step, exit 143; the same command continues it', async () => {
  const out = join(dir, 'cluster');
  const r = await interrupted(train(out, '--nodes', '2', '--no-progress'), out, 3 + Math.floor(Math.random() * 10), ['SIGTERM']);
  assert.equal(r.code, 143, r.stderr);
  const m = /^vitreg train: interrupted at step (\d+) of 40; checkpoint written \(.*step-(\d+)\); run the same command to continue$/.exec(
    lastLine(r.stderr),
  );
  assert.ok(m && m[1] === m[2], r.stderr);
  assert.match(r.stderr, /vitreg train: SIGTERM: stopping \(every worker stops after the same step/);
  const again = await vitreg(train(out, '--nodes', '2', '--no-progress'));
  assert.equal(again.code, 0, again.stderr);
  assert.match(again.stderr, new RegExp(`resuming from step ${m![1]} of ${STEPS}`));
  assert.equal(JSON.parse(again.stdout.trim().split('\n').pop()!).step, STEPS);
});

// A second signal kills every process of the job (runLocalJob's onSecondSignal) and the command exits 128 + its number.
test('two Ctrl-C in quick succession to `vitreg train --nodes 2`: it exits at once (130), without the "interrupted" line', async () => {
  const out = join(dir, 'cluster-twice');
  const t0 = Date.now();
  const r = await interrupted(train(out, '--nodes', '2', '--no-progress'), out, 2, ['SIGINT', 'SIGINT']);
  assert.equal(r.code, 130, r.stderr);
  assert.match(r.stderr, /vitreg train: SIGINT: stopping \(every worker stops after the same step/);
  assert.doesNotMatch(r.stderr, /interrupted at step/);
  assert.ok(Date.now() - t0 < 60_000, 'exited at once, not after the run');
  const metrics = (await readFile(join(out, 'metrics.jsonl'), 'utf8')).trim().split('\n');
  assert.ok(metrics.length < STEPS, `stopped before the end (${metrics.length} steps)`);
});
