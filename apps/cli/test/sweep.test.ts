/**
 * vitreg sweep without training (fast): the sweep file's check (every bad field named at once), the cells
 * (order, names, hashes, overrides), the Slurm and Kubernetes plans parsed and every cell named once, a
 * changed config refused, failing cells retried then reported (a stand-in vitreg that fails; a Slurm
 * array task with a stand-in srun), the train_args in the cell hash, the Fig. 8 plan's pod memory and
 * release.sh (a stand-in kubectl), status from markers and sacct (a stand-in sacct's array-range lines),
 * and collect on cells with hand-written results (CSV, figure data, --partial).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseAllDocuments } from 'yaml';
import { expandCells, markerPath, sameTraining, shortHash, weightArgs, writeMarker, type Cell } from '../src/sweep/cells.js';
import { collectRows, writeTable } from '../src/sweep/collect.js';
import { metricPlot, writeFigures } from '../src/sweep/figures.js';
import { LABEL_SCALE } from '@vitreg/viz';
import { podMemory } from '../src/sweep/kubernetes.js';
import { writePlan } from '../src/sweep/plan.js';
import { runSweep } from '../src/sweep/run.js';
import { runCell } from '../src/sweep/run-cell.js';
import { loadSweep, type SweepSpec } from '../src/sweep/spec.js';
import { parseSacct, sacctStates } from '../src/sweep/slurm.js';
import { sweepStatus } from '../src/sweep/status.js';
import { ROOT, vitreg } from './helpers.js';
import { toCsv } from '@vitreg/probe';

const TINY = {
  name: 'unit',
  base: 'tiny-supervised',
  set: { 'train.steps': 4, 'data.train_size': 32 },
  axes: { 'model.num_register_tokens': [0, 2], 'train.seed': [0, 1] },
  evaluate: { outliers: { images: 'synthetic', count: 2, size: 32 } },
  resources: { processes: 1, time: '00:10:00', overrides: [{ where: { 'model.num_register_tokens': 2, 'train.seed': 1 }, processes: 2 }] },
  max_concurrent: 2,
  retries: 1,
};

function sweepFile(dir: string, body: unknown, name = 'sweep.json'): string {
  const f = join(dir, name);
  writeFileSync(f, JSON.stringify(body, null, 1));
  return f;
}

function withDir(fn: (dir: string) => Promise<void> | void) {
  return async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vitreg-sweep-unit-'));
    try {
      await fn(dir);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  };
}

test(
  'a bad sweep file: one error naming the file and every bad field',
  withDir((dir) => {
    const f = sweepFile(dir, {
      name: 'bad name!',
      base: 'no-such-preset',
      axes: { 'model.num_register_tokens': [], 'train.seed': [1, 1] },
      evaluate: { probe: { tasks: ['klass'] }, outlier: {} },
      resources: { processes: 0, time: 'soon', gpus: 2 },
      max_concurrent: 'two',
    });
    assert.throws(
      () => loadSweep(f),
      (err: Error) => {
        assert.equal(err.name, 'InputError');
        assert.ok(err.message.startsWith(`${f}: `), err.message);
        for (const field of [
          'name',
          'base',
          'axes.model.num_register_tokens',
          'axes.train.seed',
          'evaluate.probe.tasks',
          'evaluate.outlier',
          'resources.processes',
          'resources.time',
          'resources.gpus',
          'max_concurrent',
        ])
          assert.ok(err.message.includes(`field "${field}"`), `${field} named in: ${err.message}`);
        return true;
      },
    );
    // Paths the training config does not have, and values it refuses: named per cell.
    const g = sweepFile(
      dir,
      { ...TINY, set: {}, axes: { 'model.num_register_tokenz': [0, 2], 'train.steps': [4, -1] }, resources: {} },
      'g.json',
    );
    assert.throws(
      () => expandCells(loadSweep(g)),
      (err: Error) =>
        err.message.startsWith(`${g}: `) &&
        /cells 0, 2: unknown field "model\.num_register_tokenz"/.test(err.message) &&
        /cells 1, 3: field "train\.steps" must be an integer >= 1, got -1/.test(err.message),
    );
  }),
);

test(
  'cells: the cartesian product in a stable order, names, hashes, resource overrides',
  withDir((dir) => {
    const spec = loadSweep(sweepFile(dir, TINY));
    const cells = expandCells(spec);
    assert.deepEqual(
      cells.map((c) => c.name),
      ['0-reg0-seed0', '1-reg0-seed1', '2-reg2-seed0', '3-reg2-seed1'],
    );
    assert.deepEqual(
      cells.map((c) => [c.config.model.num_register_tokens, c.config.train.seed, c.config.train.steps]),
      [
        [0, 0, 4],
        [0, 1, 4],
        [2, 0, 4],
        [2, 1, 4],
      ],
    );
    assert.deepEqual(
      cells.map((c) => c.resources.processes),
      [1, 1, 1, 2],
    );
    assert.equal(new Set(cells.map((c) => c.hash)).size, 4);
    assert.deepEqual(
      expandCells(loadSweep(sweepFile(dir, TINY, 'again.json'))).map((c) => c.hash),
      cells.map((c) => c.hash),
      'the same file gives the same hashes',
    );
    assert.equal(cells[0]!.dir, join(dir, 'runs/sweep-unit/cells/0-reg0-seed0'), 'out defaults to runs/sweep-<name> beside the file');
  }),
);

test(
  'train_args that change the weights (--engine) are in the cell hash; --threads and the like are not',
  withDir(async (dir) => {
    const hashes = (train_args: string[], name: string) =>
      expandCells(loadSweep(sweepFile(dir, { ...TINY, resources: {}, train_args }, name))).map((c) => c.hash);
    const none = hashes([], 'none.json');
    const tfjs = hashes(['--engine', 'tfjs'], 'tfjs.json');
    const ort = hashes(['--engine', 'onnxruntime', '--threads', '1'], 'ort.json');
    assert.notDeepEqual(tfjs, none);
    assert.notDeepEqual(ort, tfjs, 'another engine: other cells');
    assert.deepEqual(hashes(['--engine=onnxruntime', '--threads=4', '--verbose'], 'ort4.json'), hashes(['--engine=onnxruntime'], 'o.json'));
    assert.deepEqual(hashes(['--threads', '4', '--engine', 'onnxruntime', '--gpu', '1', '--no-progress'], 'ort5.json'), ort);
    assert.deepEqual(hashes(['--threads', '2'], 'threads.json'), none, 'threads alone: the cells of no train_args');
    assert.deepEqual(weightArgs(['--threads', '2', '--backend', 'wasm', '--rebuild-index', '--engine=tfjs']), [
      '--backend',
      'wasm',
      '--engine=tfjs',
    ]);
    // A done cell planned again with another engine is refused, not reused.
    const spec = loadSweep(sweepFile(dir, { ...TINY, resources: {}, train_args: ['--engine', 'tfjs'] }));
    await writePlan(spec, expandCells(spec));
    const other = loadSweep(sweepFile(dir, { ...TINY, resources: {}, train_args: ['--engine', 'onnxruntime'] }));
    await assert.rejects(writePlan(other, expandCells(other)), /cell 0 \(0-reg0-seed0\).*another config.*train_args differ/);
    const threads = loadSweep(sweepFile(dir, { ...TINY, resources: {}, train_args: ['--engine', 'tfjs', '--threads', '2'] }));
    await writePlan(threads, expandCells(threads));
    // In a multi-process cell --threads would be vitreg-worker's data-parallel threads: refused, naming the cells.
    assert.throws(
      () => expandCells(loadSweep(sweepFile(dir, { ...TINY, resources: { processes: 2 }, train_args: ['--threads=2'] }, 'p2.json'))),
      /cells 0, 1, 2, 3: train_args: --threads \/ --workers change the global batch of a multi-process cell/,
    );
    // Cells an older vitreg made (its hash left train_args out) stay done when their eval_hash, which covers
    // every train_arg, is this sweep's; with another eval_hash (other train_args, or evaluation) they are not.
    const old = expandCells(spec);
    const legacy = shortHash({ config: old[0]!.config, processes: old[0]!.resources.processes, threads: old[0]!.resources.threads });
    assert.equal(old[0]!.legacyHash, legacy);
    const marker = (c: Cell, evalHash: string) => ({ index: c.index, name: c.name, axes: c.axes, hash: legacy, eval_hash: evalHash });
    await writeMarker(old[0]!, 'cell', marker(old[0]!, old[0]!.evalHash));
    await writeMarker(old[0]!, 'done', { hash: legacy, eval_hash: old[0]!.evalHash, finished: 'then', seconds: 1 });
    await writeMarker(old[0]!, 'results', {});
    assert.ok(sameTraining({ hash: legacy, eval_hash: old[0]!.evalHash }, old[0]!));
    await writePlan(spec, old);
    assert.equal(sweepStatus(spec, old)[0]!.state, 'done');
    await writeMarker(old[0]!, 'cell', marker(old[0]!, 'another'));
    await assert.rejects(writePlan(spec, old), /cell 0 \(0-reg0-seed0\).*another config/);
    assert.ok(!sameTraining({ hash: legacy, eval_hash: 'another' }, old[0]!));
  }),
);

test(
  'plan: a Slurm job array and Kubernetes manifests that parse and name every cell once; a changed config is refused',
  withDir(async (dir) => {
    const spec = loadSweep(sweepFile(dir, TINY));
    const cells = expandCells(spec);
    const files = await writePlan(spec, cells, { vitreg: '/opt/vitreg/bin/vitreg' });
    const sbatch = readFileSync(files.slurm, 'utf8');
    const directives = [...sbatch.matchAll(/^#SBATCH (\S+)$/gm)].map((m) => m[1]);
    for (const d of ['--array=0-3%2', '--signal=USR1@180', '--requeue', '--ntasks=2', '--time=00:10:00'])
      assert.ok(directives.includes(d), `${d} in ${directives}`);
    assert.ok(directives.some((d) => /^--output=.*%A_%a\.out$/.test(d!)));
    assert.match(sbatch, /\/opt\/vitreg\/bin\/vitreg sweep run-cell \S+sweep\.json --cell "\$\{SLURM_ARRAY_TASK_ID\}" --launcher srun/);
    assert.match(sbatch, /scontrol requeue "\$\{SLURM_ARRAY_JOB_ID\}_\$\{SLURM_ARRAY_TASK_ID\}"/);
    const sh = await import('node:child_process').then((cp) => cp.spawnSync('bash', ['-n', files.slurm]));
    assert.equal(sh.status, 0, `bash -n: ${sh.stderr}`);

    // Kubernetes: every cell is run by exactly one pod index or one per-cell Job.
    const named: number[] = [];
    const docs = files.kubernetes.flatMap((f) => parseAllDocuments(readFileSync(f, 'utf8')).map((d) => d.toJSON()));
    for (const d of docs.filter((x) => x.kind === 'Job')) {
      const c = d.spec.template.spec.containers[0];
      const args: string[] = c.args;
      assert.equal(d.spec.completionMode, 'Indexed');
      assert.equal(c.command[0], '/opt/vitreg/bin/vitreg');
      assert.deepEqual(d.spec.podFailurePolicy.rules[0].onExitCodes.values, [130, 138, 143]);
      if (args.includes('--index-map')) {
        const map = args[args.indexOf('--index-map') + 1]!.split(',').map(Number);
        assert.equal(d.spec.completions, map.length);
        assert.equal(d.spec.backoffLimitPerIndex, 1);
        assert.equal(d.spec.parallelism, 2);
        named.push(...map);
      } else {
        assert.ok(args.includes('--launcher') && args[args.indexOf('--launcher') + 1] === 'env');
        const cell = Number(args[args.indexOf('--cell') + 1]);
        assert.equal(d.spec.completions, 2, 'a 2-process cell: 2 pods');
        const env = Object.fromEntries(c.env.map((e: { name: string; value?: string }) => [e.name, e.value]));
        assert.equal(env.WORLD_SIZE, '2');
        assert.ok(docs.some((s) => s.kind === 'Service' && s.metadata.name === d.spec.template.spec.subdomain));
        named.push(cell);
      }
    }
    assert.deepEqual(named.sort(), [0, 1, 2, 3], 'every cell named once');
    // The self-contained sweep.json reads back to the same cells.
    assert.deepEqual(
      expandCells(loadSweep(files.sweep)).map((c) => [c.name, c.hash]),
      cells.map((c) => [c.name, c.hash]),
    );
    // The file changed under the same out folder: refused, naming the cell and the field.
    const changed = loadSweep(sweepFile(dir, { ...TINY, set: { ...TINY.set, 'train.steps': 6 } }));
    await assert.rejects(writePlan(changed, expandCells(changed)), /cell 0 \(0-reg0-seed0\).*another config.*field "train\.steps" differs/);
    const r = await vitreg(['sweep', 'run-cell', join(dir, 'sweep.json'), '--cell', '0']);
    assert.equal(r.code, 2, r.stderr);
    assert.match(r.stderr, /another config/);
  }),
);

test(
  "Fig. 8's plan: a pod asks memory per node / processes per node; 2 of the 6 per-cell Jobs start, release.sh starts the rest 2 at a time",
  withDir(async (dir) => {
    const spec = loadSweep(join(ROOT, 'sweeps/fig8-dinov2-l14.json'), { out: join(dir, 'out') });
    const cells = expandCells(spec);
    const files = await writePlan(spec, cells);
    const sbatch = readFileSync(files.slurm, 'utf8');
    for (const d of ['--ntasks=32', '--ntasks-per-node=8', '--mem=400G', '--array=0-5%2', '--gpus-per-task=1'])
      assert.match(sbatch, new RegExp(`^#SBATCH ${d}$`, 'm'));
    const jobs = files.kubernetes
      .flatMap((f) => parseAllDocuments(readFileSync(f, 'utf8')).map((d) => d.toJSON()))
      .filter((d) => d.kind === 'Job');
    assert.equal(jobs.length, 6);
    for (const [i, j] of jobs.entries()) {
      const limits = j.spec.template.spec.containers[0].resources.limits;
      assert.equal(limits.memory, '50Gi', '400G per node shared by 8 pods');
      assert.equal(limits['nvidia.com/gpu'], 1);
      assert.equal(j.spec.completions, 32);
      assert.equal(j.spec.backoffLimit, 32 * 3, 'every pod of 3 attempts (retries 2) may fail');
      assert.equal(j.spec.suspend, i >= 2, `job ${i}: the first 2 start, the others wait suspended`);
    }
    assert.equal(podMemory('3G', 2), '1536Mi');
    // Cells of 2 processes by default, 1 by override: a single-process pod asks the whole 4G, a 2-process cell's pods 2Gi each.
    const mixed = loadSweep(
      sweepFile(dir, {
        ...TINY,
        resources: { processes: 2, memory: '4G', overrides: [{ where: { 'train.seed': 0 }, processes: 1 }] },
      }),
    );
    const memories = (await writePlan(mixed, expandCells(mixed))).kubernetes
      .flatMap((f) => parseAllDocuments(readFileSync(f, 'utf8')).map((d) => d.toJSON()))
      .filter((d) => d.kind === 'Job')
      .map((d) => [
        d.spec.completions === 2 && !d.spec.template.spec.containers[0].args.includes('--index-map'),
        d.spec.template.spec.containers[0].resources.limits.memory,
      ]);
    assert.deepEqual(memories, [
      [false, '4Gi'],
      [true, '2Gi'],
      [true, '2Gi'],
    ]);
    assert.equal(podMemory('2048', 1), '2Gi');
    // release.sh against a stand-in kubectl whose Jobs live in a state file: "cell name suspend conditions".
    const release = files.release!;
    assert.ok(release && existsSync(release));
    const bin = join(dir, 'bin');
    mkdirSync(bin);
    const state = join(dir, 'jobs');
    const calls = join(dir, 'calls');
    writeFileSync(
      join(bin, 'kubectl'),
      `#!/bin/bash\necho "$*" >> ${calls}\ncase "$1" in\n  get) cat ${state} ;;\n  patch) sed -i "s/^\\([0-9]*\\) $3 true/\\1 $3 false/" ${state} ;;\nesac\n`,
      { mode: 0o755 },
    );
    const names = jobs.map((j) => j.metadata.name as string);
    const write = (conditions: string[]) =>
      writeFileSync(state, jobs.map((j, i) => `${i} ${names[i]} ${j.spec.suspend} ${conditions[i] ?? ''}`).join('\n') + '\n');
    const suspended = () =>
      readFileSync(state, 'utf8')
        .trim()
        .split('\n')
        .map((l) => l.split(' ')[2] === 'true');
    const { spawnSync } = await import('node:child_process');
    const runRelease = (...args: string[]) => {
      const r = spawnSync('bash', [release, ...args], {
        env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, VITREG_RELEASE_SECONDS: '0' },
        encoding: 'utf8',
      });
      assert.equal(r.status, 0, r.stderr);
      return r.stdout;
    };
    write([]);
    runRelease('--once');
    assert.deepEqual(suspended(), [false, false, true, true, true, true], 'two run: none started');
    assert.match(readFileSync(calls, 'utf8'), /^get jobs -l vitreg-sweep=fig8-dinov2-l14,vitreg-sweep-cell -o jsonpath=/);
    write(['Complete']);
    // (write() rewrites from the manifests: keep what was started.)
    const keep = (started: number[], conditions: string[]) => {
      write(conditions);
      const lines = readFileSync(state, 'utf8').trim().split('\n');
      writeFileSync(state, lines.map((l, i) => (started.includes(i) ? l.replace(' true', ' false') : l)).join('\n') + '\n');
    };
    assert.match(runRelease('--once'), new RegExp(`started ${names[2]} \\(1 of 2 were running\\)`));
    assert.deepEqual(suspended(), [false, false, false, true, true, true], 'cell 0 done: cell 2 starts');
    keep([2], ['Complete', 'Failed']);
    runRelease('--once');
    assert.deepEqual(suspended(), [false, false, false, false, true, true], 'cell 1 failed: cell 3 starts (not 4)');
    keep([2, 3], ['Complete', 'Failed', 'Complete', 'Complete']);
    assert.match(runRelease(), /every per-cell Job is started/);
    assert.deepEqual(suspended(), [false, false, false, false, false, false]);
    assert.equal(readFileSync(calls, 'utf8').match(/^patch job /gm)!.length, 4, 'each suspended Job started once');
    // kubectl failing (credentials, context, API) is not "every Job is started": --once exits 1, nothing patched.
    write([]);
    writeFileSync(join(bin, 'kubectl'), `#!/bin/bash\necho "$*" >> ${calls}\n[[ "$1" == get ]] && exit 1\nexit 0\n`, { mode: 0o755 });
    const failed = spawnSync('bash', [release, '--once'], {
      env: { ...process.env, PATH: `${bin}:${process.env.PATH}`, VITREG_RELEASE_SECONDS: '0' },
      encoding: 'utf8',
    });
    assert.equal(failed.status, 1, failed.stdout + failed.stderr);
    assert.match(failed.stderr, /kubectl get jobs failed; nothing started this round/);
    assert.doesNotMatch(failed.stdout, /every per-cell Job is started/);
    assert.equal(readFileSync(calls, 'utf8').match(/^patch job /gm)!.length, 4, 'nothing patched');
    assert.throws(() => podMemory('100K', 1), /under 1 MiB per pod/);
  }),
);

test(
  'every shipped sweep file (sweeps/, docs/study/) plans: its cells, a job array and manifests naming each cell once',
  withDir(async (dir) => {
    const shipped: [string, number][] = [
      ['sweeps/fig8-dinov2-l14.json', 6],
      ['sweeps/tiny-registers.json', 6],
      ['docs/study/flat.sweep.json', 2],
      ['docs/study/study.sweep.json', 4],
    ];
    const { readdirSync } = await import('node:fs');
    const found = [
      ...readdirSync(join(ROOT, 'sweeps')).map((f) => `sweeps/${f}`),
      ...readdirSync(join(ROOT, 'docs/study'))
        .filter((f) => f.endsWith('.sweep.json'))
        .map((f) => `docs/study/${f}`),
    ];
    assert.deepEqual(found.sort(), shipped.map(([f]) => f).sort(), 'a new sweep file gets a line here');
    for (const [file, count] of shipped) {
      const spec = loadSweep(join(ROOT, file), { out: join(dir, file) });
      const cells = expandCells(spec);
      assert.equal(cells.length, count, file);
      const files = await writePlan(spec, cells);
      assert.equal(JSON.parse(readFileSync(files.cells, 'utf8')).count, count, file);
      assert.match(
        readFileSync(files.slurm, 'utf8'),
        new RegExp(`^#SBATCH --array=0-${count - 1}%${Math.min(spec.max_concurrent, count)}$`, 'm'),
      );
      const named = files.kubernetes.flatMap((f) =>
        parseAllDocuments(readFileSync(f, 'utf8'))
          .map((d) => d.toJSON())
          .filter((d) => d.kind === 'Job')
          .flatMap((d) => {
            const args: string[] = d.spec.template.spec.containers[0].args;
            if (args.includes('--cell')) return [Number(args[args.indexOf('--cell') + 1])];
            return args.includes('--index-map')
              ? args[args.indexOf('--index-map') + 1]!.split(',').map(Number)
              : Array.from({ length: d.spec.completions }, (_, i) => i);
          }),
      );
      assert.deepEqual(
        named.sort((a, b) => a - b),
        cells.map((c) => c.index),
        `${file}: every cell named once`,
      );
    }
  }),
);

test(
  'a failing cell is tried again up to retries, then reported; status says failed',
  withDir(async (dir) => {
    const spec = loadSweep(sweepFile(dir, { ...TINY, resources: {}, axes: { 'train.seed': [0, 1] } }));
    const cells = expandCells(spec);
    const before = process.env.VITREG_SWEEP_CLI;
    process.env.VITREG_SWEEP_CLI = '/bin/false';
    try {
      const lines: string[] = [];
      const r = await runSweep(spec, cells, { concurrency: 2, log: (l) => lines.push(l) });
      assert.equal(r.code, 1);
      assert.deepEqual(
        r.outcomes.map((o) => o.outcome),
        ['exhausted', 'exhausted'],
      );
      for (const c of cells) {
        const failed = JSON.parse(readFileSync(markerPath(c, 'failed'), 'utf8'));
        assert.equal(failed.attempts, 2, 'retries 1: two attempts');
        assert.equal(failed.stage, 'train');
        assert.ok(!existsSync(markerPath(c, 'running')));
      }
      assert.equal(lines.filter((l) => / failed \(attempt \d\)/.test(l)).length, 4, lines.join('\n'));
      assert.deepEqual(
        sweepStatus(spec, cells).map((s) => s.state),
        ['failed', 'failed'],
      );
      // Run again: not tried (reported); --retry-failed tries once more.
      const again = await runSweep(spec, cells, { concurrency: 1 });
      assert.deepEqual(
        again.outcomes.map((o) => o.outcome),
        ['exhausted', 'exhausted'],
      );
      assert.match(again.outcomes[0]!.message, /failed 2 times, not run again/);
    } finally {
      if (before === undefined) delete process.env.VITREG_SWEEP_CLI;
      else process.env.VITREG_SWEEP_CLI = before;
    }
  }),
);

test(
  'a Slurm array task (run-cell --launcher srun) retries its failing cell up to retries in its allocation, then fails',
  withDir(async (dir) => {
    const spec = loadSweep(sweepFile(dir, { ...TINY, resources: {}, axes: { 'train.seed': [0] }, retries: 2 }));
    const [cell] = expandCells(spec);
    // A stand-in srun that counts its calls and fails (as a training that crashes would).
    const calls = join(dir, 'srun-calls');
    const srun = join(dir, 'srun');
    writeFileSync(srun, `#!/bin/sh\necho "$*" >> ${calls}\nexit 1\n`, { mode: 0o755 });
    const saved = { srun: process.env.VITREG_SWEEP_SRUN, task: process.env.SLURM_ARRAY_TASK_ID };
    process.env.VITREG_SWEEP_SRUN = srun;
    process.env.SLURM_ARRAY_TASK_ID = '0';
    try {
      const { sweepCommand } = await import('../src/commands/sweep.js');
      const code = await sweepCommand.run(['run-cell', join(dir, 'sweep.json'), '--launcher', 'srun']);
      assert.equal(code, 1);
      const lines = readFileSync(calls, 'utf8').trim().split('\n');
      assert.equal(lines.length, 3, 'retries 2: three attempts in the one array task');
      assert.match(lines[0]!, /^--ntasks=1 /);
      const failed = JSON.parse(readFileSync(markerPath(cell!, 'failed'), 'utf8'));
      assert.equal(failed.attempts, 3);
      assert.equal(sweepStatus(spec, [cell!])[0]!.state, 'failed');
      // A requeued task (or a new array) does not try it again; --retry-failed tries once more, then stops.
      assert.equal(await sweepCommand.run(['run-cell', join(dir, 'sweep.json'), '--launcher', 'srun']), 1);
      assert.equal(readFileSync(calls, 'utf8').trim().split('\n').length, 3);
      assert.equal(await sweepCommand.run(['run-cell', join(dir, 'sweep.json'), '--launcher', 'srun', '--retry-failed']), 1);
      assert.equal(readFileSync(calls, 'utf8').trim().split('\n').length, 4);
      // The job array's script says so.
      const files = await writePlan(spec, [cell!]);
      assert.match(readFileSync(files.slurm, 'utf8'), /run again in this allocation up to 2 more time/);
    } finally {
      for (const [k, v] of [
        ['VITREG_SWEEP_SRUN', saved.srun],
        ['SLURM_ARRAY_TASK_ID', saved.task],
      ] as const)
        if (v === undefined) delete process.env[k];
        else process.env[k] = v;
    }
  }),
);

test(
  "a cell running elsewhere is not started again here; under a scheduler a running marker is a predecessor's",
  withDir(async (dir) => {
    const spec = loadSweep(sweepFile(dir, { ...TINY, resources: {}, axes: { 'train.seed': [0] } }));
    const [cell] = expandCells(spec);
    const host = (await import('node:os')).hostname();
    await writeMarker(cell!, 'running', { pid: process.pid, host, started: 'now', attempt: 1 });
    const before = process.env.VITREG_SWEEP_CLI;
    process.env.VITREG_SWEEP_CLI = '/bin/false';
    try {
      const r = await runSweep(spec, [cell!], { concurrency: 1 });
      assert.deepEqual(
        r.outcomes.map((o) => o.outcome),
        ['busy'],
      );
      assert.equal(r.code, 1);
      assert.match(r.outcomes[0]!.message, /already running \(pid \d+ on .*remove .*running\.json/);
      // A replacement pod of an Indexed Job (same marker, a scheduler's index): it runs (and here fails).
      process.env.JOB_COMPLETION_INDEX = '0';
      const o = await runCell(spec, cell!, { launcher: 'local' });
      assert.equal(o.outcome, 'failed');
      assert.equal(JSON.parse(readFileSync(markerPath(cell!, 'failed'), 'utf8')).attempts, 1);
    } finally {
      delete process.env.JOB_COMPLETION_INDEX;
      if (before === undefined) delete process.env.VITREG_SWEEP_CLI;
      else process.env.VITREG_SWEEP_CLI = before;
    }
  }),
);

test(
  'changed evaluation settings: the done cell is evaluated again (old outputs removed), its training kept',
  withDir(async (dir) => {
    const spec = loadSweep(sweepFile(dir, { ...TINY, resources: {}, axes: { 'train.seed': [0] }, evaluate: {} }));
    const [cell] = expandCells(spec);
    const ckpt = join(cell!.dir, 'train/checkpoints/step-4');
    mkdirSync(ckpt, { recursive: true });
    mkdirSync(join(cell!.dir, 'eval/probe'), { recursive: true });
    writeFileSync(join(ckpt, 'model.safetensors'), 'weights');
    writeFileSync(join(cell!.dir, 'train/eval.json'), JSON.stringify({ step: 4, val_accuracy: 0.5 }));
    await writeMarker(cell!, 'results', {});
    await writeMarker(cell!, 'done', { hash: cell!.hash, eval_hash: 'an-older-one', finished: '', seconds: 1 });
    assert.equal(sweepStatus(spec, [cell!])[0]!.state, 'pending');
    const o = await runCell(spec, cell!, { launcher: 'local' });
    assert.equal(o.outcome, 'done', o.message);
    assert.ok(!existsSync(join(cell!.dir, 'eval/probe')), 'the old evaluation outputs are gone');
    assert.equal(JSON.parse(readFileSync(markerPath(cell!, 'done'), 'utf8')).eval_hash, cell!.evalHash);
    const results = JSON.parse(readFileSync(markerPath(cell!, 'results'), 'utf8'));
    assert.equal(results.measurements['train.val_accuracy'], 0.5);
    assert.ok(!existsSync(join(cell!.dir, 'logs/train.log')), 'the finished training was not started again');
  }),
);

/** Marks a cell done with the given measurements and a norms file, as run-cell would. */
async function fakeDone(spec: SweepSpec, c: Cell, m: Record<string, number>): Promise<void> {
  mkdirSync(join(c.dir, 'eval', 'outliers'), { recursive: true });
  writeFileSync(join(c.dir, 'eval', 'outliers', 'norms.json'), JSON.stringify({ values: [1, 2, 3, 40 + c.index], threshold: 20 }));
  await writeMarker(c, 'cell', { index: c.index, name: c.name, axes: c.axes, hash: c.hash, eval_hash: c.evalHash });
  await writeMarker(c, 'results', {
    index: c.index,
    name: c.name,
    axes: c.axes,
    hash: c.hash,
    checkpoint: '',
    weights_sha256: `sha-${c.index}`,
    measurements: m,
    seconds: 1,
  });
  await writeMarker(c, 'done', { hash: c.hash, eval_hash: c.evalHash, finished: '', seconds: 1 });
  void spec;
}

test(
  'collect: the CSV and the figure data equal the cells results; an incomplete sweep is refused unless --partial',
  withDir(async (dir) => {
    const spec = loadSweep(
      sweepFile(dir, { ...TINY, axes: { 'model.arch': ['vit_micro_patch8_reg4', 'vit_micro_patch8'], ...TINY.axes }, resources: {} }),
    );
    const cells = expandCells(spec);
    assert.equal(cells.length, 8);
    const value = (c: Cell) => ({ 'class.accuracy': 0.5 + 0.01 * c.index, 'outliers.fraction': c.index / 100 });
    for (const c of cells.slice(0, 7)) await fakeDone(spec, c, value(c));
    // Cell 7 not done: refused, naming it.
    assert.throws(() => collectRows(spec, cells), /1 of 8 cells are not done: 7-vit-micro-patch8-reg2-seed1 \(pending\).*--partial/);
    const partial = collectRows(spec, cells, { partial: true });
    assert.deepEqual(partial.figure.missing, ['7-vit-micro-patch8-reg2-seed1']);
    await fakeDone(spec, cells[7]!, value(cells[7]!));
    const c = collectRows(spec, cells);
    const table = await writeTable(spec, c);
    const figs = await writeFigures(spec, cells, c);
    // CSV rows against each cell's own results.json.
    const [head, ...lines] = readFileSync(table.csv, 'utf8').trim().split('\n');
    const cols = head!.split(',');
    assert.deepEqual(cols, [
      'index',
      'cell',
      'status',
      'model.arch',
      'model.num_register_tokens',
      'train.seed',
      'class.accuracy',
      'outliers.fraction',
      'weights_sha256',
    ]);
    assert.equal(lines.length, 8);
    for (const [i, line] of lines.entries()) {
      const row = Object.fromEntries(line.split(',').map((v, k) => [cols[k], v]));
      const own = JSON.parse(readFileSync(markerPath(cells[i]!, 'results'), 'utf8'));
      assert.equal(row.cell, own.name);
      assert.equal(Number(row['class.accuracy']), own.measurements['class.accuracy']);
      assert.equal(Number(row['outliers.fraction']), own.measurements['outliers.fraction']);
      assert.equal(row['model.num_register_tokens'], String(own.axes['model.num_register_tokens']));
      assert.equal(row.weights_sha256, own.weights_sha256);
    }
    assert.equal(readFileSync(table.jsonl, 'utf8').trim().split('\n').length, 8);
    // The CSV is @vitreg/probe's toCsv over the given columns, in their order.
    assert.equal(toCsv([{ b: 1, a: 'x,y', d: 'left out' }], ['a', 'b', 'c']), 'a,b,c\n"x,y",1,\n');
    // Figure data: x registers, a series per model, seeds pooled: mean and sample std of the two cells.
    const fig = JSON.parse(readFileSync(figs.data, 'utf8'));
    assert.equal(fig.x, 'model.num_register_tokens');
    assert.deepEqual(fig.repeats, ['train.seed']);
    assert.deepEqual(fig.groups, ['model.arch']);
    const acc = fig.metrics['class.accuracy'];
    assert.deepEqual(
      acc.map((s: { label: string }) => s.label),
      ['model.arch=vit_micro_patch8_reg4', 'model.arch=vit_micro_patch8'],
    );
    for (const s of acc)
      for (const p of s.points) {
        const vals = p.cells.map(
          (name: string) =>
            JSON.parse(
              readFileSync(
                markerPath(
                  cells.find((x) => x.name === name)!,
                  'results',
                ),
                'utf8',
              ),
            ).measurements['class.accuracy'],
        );
        assert.equal(p.n, 2);
        assert.ok(Math.abs(p.mean - (vals[0] + vals[1]) / 2) < 1e-12);
        assert.ok(Math.abs(p.std - Math.abs(vals[0] - vals[1]) / Math.SQRT2) < 1e-12);
      }
    for (const f of [...Object.values(figs.plots), figs.histograms!]) assert.ok(readFileSync(f).subarray(1, 4).toString() === 'PNG', f);
    const html = readFileSync(figs.html, 'utf8');
    assert.match(html, /All 8 cells done/);
    assert.match(html, /figures\/class\.accuracy\.png/);
    assert.match(html, /norm-histograms\.png/);
  }),
);

test(
  "sacct's array-job lines: one task, pending ranges with a %K limit and lists, a CANCELLED by uid; no sacct: null",
  withDir(async (dir) => {
    const bin = join(dir, 'bin');
    mkdirSync(bin);
    const args = join(dir, 'args');
    // What `sacct -n -P -X -j 77 -o JobID,State` prints for an 8-task array, 2 at once, partway through.
    const out = ['77_0|COMPLETED', '77_1|CANCELLED by 0', '77_2|RUNNING', '77_3|FAILED', '77_[4-5%2]|PENDING', '77_[6,7]|PENDING', ''].join(
      '\n',
    );
    writeFileSync(join(bin, 'sacct'), `#!/bin/sh\necho "$*" > ${args}\nprintf '%s\\n' '${out.trim().split('\n').join("' '")}'\n`, {
      mode: 0o755,
    });
    const path = process.env.PATH;
    try {
      process.env.PATH = `${bin}:${path}`;
      const states = sacctStates('77')!;
      assert.equal(readFileSync(args, 'utf8').trim(), '-n -P -X -j 77 -o JobID,State');
      assert.deepEqual(
        [...states].sort((a, b) => a[0] - b[0]),
        [
          [0, { state: 'COMPLETED', job: '77_0' }],
          [1, { state: 'CANCELLED', job: '77_1' }],
          [2, { state: 'RUNNING', job: '77_2' }],
          [3, { state: 'FAILED', job: '77_3' }],
          [4, { state: 'PENDING', job: '77_4' }],
          [5, { state: 'PENDING', job: '77_5' }],
          [6, { state: 'PENDING', job: '77_6' }],
          [7, { state: 'PENDING', job: '77_7' }],
        ],
      );
      assert.deepEqual([...parseSacct('77_[10-12,15%4]|PENDING\n77_3.batch|COMPLETED\n\n').keys()], [10, 11, 12, 15]);
      // sacct failing (accounting not set up) or absent: null, the markers alone tell.
      writeFileSync(join(bin, 'sacct'), '#!/bin/sh\necho "sacct: error: Slurm accounting storage is disabled" >&2\nexit 1\n', {
        mode: 0o755,
      });
      assert.equal(sacctStates('77'), null);
      process.env.PATH = join(dir, 'nowhere');
      assert.equal(sacctStates('77'), null);
    } finally {
      process.env.PATH = path;
    }
  }),
);

test('a metric figure draws its title, y and x labels and a legend entry per series (ink where each goes)', () => {
  const series = ['model.arch=vit_small', 'model.arch=vit_base'].map((label, k) => ({
    label,
    points: [0, 2, 4].map((x) => ({ x, mean: 0.5 + 0.1 * k + 0.01 * x, std: 0.02, n: 2, cells: [] })),
  }));
  const c = metricPlot('class.accuracy', series, 'model.num_register_tokens');
  const th = 7 * LABEL_SCALE;
  const [, y0, , h] = c.info.plotBox as number[];
  const ink = (x0: number, x1: number, ya: number, yb: number, rgb: readonly number[]) => {
    let n = 0;
    for (let y = ya; y < yb; y++)
      for (let x = x0; x < x1; x++) {
        const i = (y * c.width + x) * 3;
        if (c.data[i] === rgb[0] && c.data[i + 1] === rgb[1] && c.data[i + 2] === rgb[2]) n++;
      }
    return n;
  };
  const black = [0, 0, 0];
  // The title (centred, first text row) and the y label (left, second row) lie above the plot box.
  assert.ok(6 + 2 * th + 8 <= y0!, 'two text rows above the plot');
  const title = ink(0, c.width, 6, 6 + th, black);
  assert.ok(title > 300, `a title: ${title} black pixels`);
  assert.ok(ink(0, 40, 6, 6 + th, black) === 0 && ink(c.width / 2 - 40, c.width / 2 + 40, 6, 6 + th, black) > 50, 'the title is centred');
  const yLabel = ink(0, c.width, 6 + th + 8, 6 + 2 * th + 8, black);
  assert.ok(yLabel > 200, `a y label: ${yLabel} black pixels`);
  assert.ok(ink(4, 60, 6 + th + 8, 6 + 2 * th + 8, black) > 30, 'the y label starts at the left');
  const xLabel = ink(0, c.width, y0! + h! + th + 16, y0! + h! + 2 * th + 16, black);
  assert.ok(xLabel > 200, `an x label: ${xLabel} black pixels`);
  // The legend: a row per series below the plot, a swatch and its words in the series' colour.
  const legend = c.info.legend as { labels: string[]; box: number[] };
  assert.deepEqual(legend.labels, ['model.arch=vit_small', 'model.arch=vit_base']);
  const colors = [
    [31, 119, 180],
    [255, 127, 14],
  ];
  for (const [k, rgb] of colors.entries()) {
    const y = legend.box[1]! + k * (th + 8);
    assert.ok(y > y0! + h! + 2 * th + 16, 'the legend is below the x label');
    assert.ok(ink(8, 28, y, y + th, rgb) >= 60, `series ${k}: a swatch`);
    assert.ok(ink(34, c.width, y, y + th, rgb) > 200, `series ${k}: its label`);
  }
});

test(
  'status: markers, and sacct states of the array job where it answers',
  withDir(async (dir) => {
    const spec = loadSweep(sweepFile(dir, TINY));
    const cells = expandCells(spec);
    await fakeDone(spec, cells[0]!, { 'class.accuracy': 1 });
    await writeMarker(cells[1]!, 'running', {
      pid: process.pid,
      host: (await import('node:os')).hostname(),
      started: 'now',
      attempt: 1,
      job: 'slurm 77_1',
    });
    const sacct = (job: string) => {
      assert.equal(job, '77', 'the array job from the running marker');
      return new Map([
        [2, { state: 'FAILED', job: '77_2' }],
        [3, { state: 'PENDING', job: '77_3' }],
      ]);
    };
    assert.deepEqual(
      sweepStatus(spec, cells, { sacct }).map((r) => [r.state, r.scheduler ?? '']),
      [
        ['done', ''],
        ['running', ''],
        ['failed', '77_2 FAILED'],
        ['pending', '77_3 PENDING'],
      ],
    );
    const r = await vitreg(['sweep', 'status', join(dir, 'sweep.json'), '--json']);
    assert.equal(r.code, 0, r.stderr);
    assert.deepEqual(
      JSON.parse(r.stdout).map((x: { state: string }) => x.state),
      ['done', 'running', 'pending', 'pending'],
    );
  }),
);
