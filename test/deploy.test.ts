/**
 * deploy/: the Kubernetes manifest and the Slurm batch script hang together. No Kubernetes runtime
 * can run here, so the manifest is parsed and its wiring checked: an Indexed Job whose pods reach
 * pod 0 (the coordinator host) through a headless Service, with completions == parallelism ==
 * WORLD_SIZE, the token from a Secret and one GPU per pod. The batch script is checked with `bash -n`
 * and for its srun line (test/launchers.test.ts runs it under a real Slurm). Both files' stop settings
 * (issue 23) are checked too: the manifest's grace period, restartPolicy Never and the podFailurePolicy
 * that ignores stops on request (exit 130/138/143) and disruptions; the script's `--signal=USR1@S`,
 * `--requeue` and its requeue on exit 138 (a script run with a faked srun and scontrol shows it).
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { PRESET_NAMES } from '@vitreg/trainer';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const MANIFEST = join(ROOT, 'deploy/kubernetes/vitreg-train.yaml');
const SBATCH = join(ROOT, 'deploy/slurm/vitreg-train.sbatch');

// Parsed YAML is navigated freely in these checks.
// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Obj = any;

function manifest(): Obj[] {
  const docs = parseAllDocuments(readFileSync(MANIFEST, 'utf8'));
  for (const d of docs) assert.deepEqual(d.errors, [], `${MANIFEST}: YAML errors`);
  return docs.map((d) => d.toJS()).filter((d) => d !== null);
}

function envOf(container: Obj): Map<string, Obj> {
  return new Map((container.env ?? []).map((e: Obj) => [e.name, e]));
}

test('deploy/kubernetes/vitreg-train.yaml: an Indexed Job of N one-GPU workers that reach pod 0 through a headless Service', () => {
  const docs = manifest();
  for (const d of docs) assert.ok(d.apiVersion && d.kind && d.metadata?.name, 'every document has apiVersion, kind and metadata.name');
  const services = docs.filter((d) => d.kind === 'Service');
  const jobs = docs.filter((d) => d.kind === 'Job');
  assert.equal(jobs.length, 1, 'one Job');
  assert.equal(services.length, 1, 'one Service');
  const [job, svc] = [jobs[0], services[0]];
  assert.equal(job.apiVersion, 'batch/v1');
  assert.equal(svc.apiVersion, 'v1');

  // The Job: Indexed, all workers at once.
  const spec = job.spec;
  assert.equal(spec.completionMode, 'Indexed');
  assert.ok(Number.isInteger(spec.completions) && spec.completions >= 2, 'completions: the number of workers');
  assert.equal(spec.parallelism, spec.completions, 'parallelism == completions: every worker runs at once');
  assert.ok(Number.isInteger(spec.backoffLimit) && spec.backoffLimit >= 1, 'backoffLimit allows restarts');
  const pod = spec.template.spec;
  assert.ok(['OnFailure', 'Never'].includes(pod.restartPolicy), 'a Job pod restarts OnFailure or Never');

  // The headless Service names the pods: subdomain == service name, selector matches the Job's pods.
  assert.equal(svc.spec.clusterIP, 'None', 'headless Service');
  assert.equal(pod.subdomain, svc.metadata.name, 'pod subdomain == the Service name');
  const podLabels = {
    ...(spec.template.metadata?.labels ?? {}),
    'job-name': job.metadata.name,
    'batch.kubernetes.io/job-name': job.metadata.name,
  };
  for (const [k, v] of Object.entries(svc.spec.selector ?? {}))
    assert.equal(podLabels[k], v, `Service selector ${k}=${v} matches the Job's pods`);
  assert.ok(Object.keys(svc.spec.selector ?? {}).length > 0, 'the Service selects pods');
  if (job.metadata.namespace || svc.metadata.namespace) assert.equal(job.metadata.namespace, svc.metadata.namespace, 'same namespace');

  // The worker container.
  assert.equal(pod.containers.length, 1, 'one container per pod');
  const c = pod.containers[0];
  const argv: string[] = [...(c.command ?? []), ...(c.args ?? [])].map(String);
  assert.equal(argv[0], 'vitreg-worker', 'the container runs vitreg-worker');
  const flag = (name: string) => {
    const i = argv.indexOf(name);
    return i < 0 ? undefined : argv[i + 1];
  };
  const preset = flag('--preset');
  assert.ok(preset !== undefined && PRESET_NAMES.includes(preset), `--preset ${preset} is a known preset`);
  const out = flag('--out');
  assert.ok(out !== undefined, '--out');
  const mounts: Obj[] = c.volumeMounts ?? [];
  const runsMount = mounts.find((m) => out === m.mountPath || out.startsWith(`${m.mountPath}/`));
  assert.ok(runsMount && !runsMount.readOnly, `--out ${out} is on a writable volume mount`);
  const runsVolume = (pod.volumes ?? []).find((v: Obj) => v.name === runsMount.name);
  assert.ok(runsVolume?.persistentVolumeClaim?.claimName, 'the run folder is on a PersistentVolumeClaim (shared by every pod)');
  assert.ok(argv.includes('--resume'), '--resume: a restarted worker continues from the last checkpoint');
  assert.equal(flag('--coordinator'), undefined, 'no --coordinator: pod 0 hosts it');

  const env = envOf(c);
  const value = (name: string) => {
    const e = env.get(name);
    assert.ok(e, `env ${name}`);
    assert.equal(typeof e.value, 'string', `env ${name} is a string value`);
    return e.value as string;
  };
  assert.equal(Number(value('WORLD_SIZE')), spec.completions, 'WORLD_SIZE == completions');
  const port = Number(value('MASTER_PORT'));
  assert.ok(Number.isInteger(port) && port > 0 && port < 65536, 'MASTER_PORT is a port');
  // Pod i of an Indexed Job has hostname <job>-<i>; with the subdomain it resolves as <job>-<i>.<service>.
  const addr = value('MASTER_ADDR');
  const fqdnTail = `.svc.cluster.local`;
  const short = addr.endsWith(fqdnTail) ? addr.slice(0, -fqdnTail.length).split('.').slice(0, 2).join('.') : addr;
  assert.equal(short, `${job.metadata.name}-0.${svc.metadata.name}`, 'MASTER_ADDR is pod 0 through the Service');
  assert.ok(
    (svc.spec.ports ?? []).some((p: Obj) => p.port === port && (p.targetPort ?? p.port) === port),
    `the Service exposes MASTER_PORT ${port}`,
  );
  assert.ok(!env.has('JOB_COMPLETION_INDEX'), 'JOB_COMPLETION_INDEX is left to Kubernetes');
  assert.ok(!env.has('RANK'), 'no RANK: the rank is JOB_COMPLETION_INDEX');

  // The job's secret comes from a Secret, never inline.
  const token = env.get('VITREG_TOKEN');
  assert.ok(token, 'env VITREG_TOKEN');
  assert.equal(token.value, undefined, 'VITREG_TOKEN is not written in the manifest');
  const ref = token.valueFrom?.secretKeyRef;
  assert.ok(ref?.name && ref?.key, 'VITREG_TOKEN comes from a secretKeyRef');
  const secret = docs.find((d) => d.kind === 'Secret' && d.metadata.name === ref.name);
  const text = readFileSync(MANIFEST, 'utf8');
  assert.ok(
    secret || new RegExp(`kubectl create secret generic ${ref.name} --from-literal=${ref.key}=`).test(text),
    `the Secret ${ref.name} (key ${ref.key}) is in the manifest or its kubectl create command is`,
  );

  // --advertise $(VAR) must name a variable the container defines (Kubernetes expands $(VAR) in args).
  for (const a of argv) {
    for (const m of a.matchAll(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g)) assert.ok(env.has(m[1]!), `args use $(${m[1]}), defined in env`);
  }

  // One GPU per worker.
  assert.equal(String(c.resources?.limits?.['nvidia.com/gpu']), '1', 'resources.limits nvidia.com/gpu: 1');
});

test('deploy/slurm/vitreg-train.sbatch: valid bash, one task per GPU, a generated token and srun vitreg-worker', () => {
  execFileSync('bash', ['-n', SBATCH]); // throws (and fails the test) on a syntax error
  assert.ok(statSync(SBATCH).mode & 0o100, 'executable');
  const text = readFileSync(SBATCH, 'utf8');
  const directives = new Map([...text.matchAll(/^#SBATCH\s+--([a-z-]+)(?:=(\S+))?/gm)].map((m) => [m[1]!, m[2] ?? '']));
  assert.ok(Number(directives.get('ntasks-per-node')) >= 1, '#SBATCH --ntasks-per-node (one task per GPU)');
  assert.equal(directives.get('gpus-per-task'), '1', '#SBATCH --gpus-per-task=1');
  assert.match(text, /^set -euo pipefail$/m);
  assert.match(text, /^export MASTER_PORT=/m, 'MASTER_PORT chosen in the script');
  assert.match(text, /VITREG_TOKEN="\$\(openssl rand -hex 16/, 'VITREG_TOKEN generated once in the batch script');
  assert.match(text, /^\s*export VITREG_TOKEN\b/m, 'and exported to the tasks');
  const sruns = text.split('\n').filter((l) => /^\s*srun\b/.test(l));
  assert.equal(sruns.length, 1, 'one srun line');
  assert.match(sruns[0]!, /^\s*srun\b.*\svitreg-worker\s/, 'srun runs vitreg-worker');
  assert.match(sruns[0]!, /--out\s+"\$RUN_DIR"/);
  assert.match(sruns[0]!, /--resume/);
  assert.doesNotMatch(sruns[0]!, /--coordinator/, 'task 0 hosts the coordinator');
});

test('deploy/kubernetes/vitreg-train.yaml: stops on request and disruptions are not failures; a grace period for the checkpoint', () => {
  const job = manifest().find((d) => d.kind === 'Job');
  const pod = job.spec.template.spec;
  assert.equal(pod.restartPolicy, 'Never', 'restartPolicy Never (podFailurePolicy requires it)');
  const grace = pod.terminationGracePeriodSeconds;
  assert.ok(Number.isInteger(grace) && grace >= 60, `terminationGracePeriodSeconds ${grace}: at least 60 s for one step and a checkpoint`);
  const rules: Obj[] = job.spec.podFailurePolicy?.rules ?? [];
  const byExit = rules.find((r) => r.onExitCodes);
  assert.equal(byExit?.action, 'Ignore', 'exit codes of a stop on request: Ignore');
  assert.equal(byExit.onExitCodes.operator, 'In');
  assert.deepEqual(
    [...byExit.onExitCodes.values].sort((a: number, b: number) => a - b),
    [130, 138, 143],
    'SIGINT, SIGUSR1, SIGTERM exits',
  );
  assert.equal(byExit.onExitCodes.containerName, pod.containers[0].name, 'the rule names the worker container');
  const disruption = rules.find((r) => (r.onPodConditions ?? []).some((c: Obj) => c.type === 'DisruptionTarget'));
  assert.equal(disruption?.action, 'Ignore', 'DisruptionTarget (eviction, preemption): Ignore');
  // The 'Ignore' rules come before any rule that fails the job for the same codes.
  assert.ok(rules.indexOf(byExit) < rules.findIndex((r) => r.action === 'FailJob') || !rules.some((r) => r.action === 'FailJob'));
});

test('deploy/slurm/vitreg-train.sbatch: USR1 before the time limit, --requeue, and a requeue when the workers exit 138', () => {
  const text = readFileSync(SBATCH, 'utf8');
  const directives = new Map([...text.matchAll(/^#SBATCH\s+--([a-z-]+)(?:=(\S+))?/gm)].map((m) => [m[1]!, m[2] ?? '']));
  const signal = /^(?:B:)?USR1@(\d+)$/.exec(directives.get('signal') ?? '');
  assert.ok(signal, `#SBATCH --signal=USR1@SECONDS, got ${directives.get('signal')}`);
  assert.ok(Number(signal[1]) >= 60, 'USR1 at least 60 s before the limit: time for a step and a checkpoint');
  assert.ok(directives.has('requeue'), '#SBATCH --requeue: a preempted job is requeued');
  assert.ok(!directives.has('no-requeue'));
  assert.match(text, /srun\b.*\|\| code=\$\?/, "srun's exit code kept");
  // Run the script's tail with a fake srun (exiting 138, then 1) and scontrol that log their arguments.
  const dir = mkdtempSync(join(tmpdir(), 'vitreg-sbatch-'));
  try {
    const log = join(dir, 'calls.log');
    for (const [name, body] of [
      ['srun', `echo "srun $*" >> ${log}; exit \${FAKE_SRUN_EXIT}`],
      ['scontrol', `echo "scontrol $*" >> ${log}`],
    ] as const) {
      writeFileSync(join(dir, name), `#!/bin/bash\n${body}\n`);
      chmodSync(join(dir, name), 0o755);
    }
    const run = (exit: number, extra: Record<string, string> = {}) => {
      rmSync(log, { force: true });
      const r = spawnSync('bash', [SBATCH, '--preset', 'tiny-supervised'], {
        cwd: dir,
        encoding: 'utf8',
        env: {
          PATH: `${dir}:${process.env.PATH}`,
          HOME: dir,
          SLURM_JOB_ID: '4242',
          SLURM_JOB_NODELIST: 'node0',
          SLURM_SUBMIT_DIR: dir,
          SLURM_NTASKS: '2',
          FAKE_SRUN_EXIT: String(exit),
          ...extra,
        },
      });
      return { code: r.status, calls: existsSync(log) ? readFileSync(log, 'utf8') : '', out: r.stdout + r.stderr };
    };
    const stopped = run(138);
    assert.equal(stopped.code, 138, stopped.out);
    assert.match(stopped.calls, /^srun .*vitreg-worker/m, stopped.out);
    assert.match(stopped.calls, /^scontrol requeue 4242$/m, 'exit 138: the job is requeued');
    const failed = run(1);
    assert.equal(failed.code, 1, failed.out);
    assert.doesNotMatch(failed.calls, /scontrol requeue/, 'another exit: no requeue');
    const noRequeue = run(138, { VITREG_REQUEUE: '0' });
    assert.doesNotMatch(noRequeue.calls, /scontrol requeue/, 'VITREG_REQUEUE=0: no requeue');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
