/**
 * The Kubernetes plan of a sweep, as YAML (a small emitter of block-style YAML whose strings are JSON
 * strings, so any YAML parser reads it):
 *   - single-process cells: one Indexed Job (completionMode Indexed, completions N, parallelism K): the pod
 *     of index I runs cell I (JOB_COMPLETION_INDEX), each index retried on its own (backoffLimitPerIndex:
 *     the sweep's retries); a stop on request (exit 130 / 138 / 143 after a checkpoint) and a disruption
 *     (eviction, preemption) are not counted (podFailurePolicy) and the replacement pod continues.
 *   - multi-process cells: one Job per cell as in deploy/kubernetes: P pods (Indexed), a headless Service
 *     through which every pod reaches pod 0's coordinator; rank 0 evaluates and writes the markers; a
 *     failing cell's pods are replaced up to P x (retries + 1) times (backoffLimit). max_concurrent: the
 *     first K of these Jobs start, the others are created suspended (spec.suspend) and release.sh, run
 *     beside kubectl, resumes the next one whenever fewer than K run.
 * Resources: `memory` is memory per node (Slurm's --mem); a pod is one process, so it asks memory /
 * processes_per_node (default: all the cell's processes on one node).
 * backoffLimitPerIndex needs Kubernetes 1.29 or later (beta there, on by default; GA in 1.33).
 * The runs volume is mounted at the sweep's out folder, so the paths in sweep.json and the cells' files
 * are the same in every pod.
 */
import type { Cell } from './cells.js';
import type { CellResources, SweepSpec } from './spec.js';

type Y = string | number | boolean | null | undefined | Y[] | { [k: string]: Y };

/** Block-style YAML of `v` (strings as JSON strings; undefined fields left out). */
export function toYaml(v: Y, indent = ''): string {
  const scalar = (x: Y) => (typeof x === 'string' ? JSON.stringify(x) : x === null || x === undefined ? 'null' : String(x));
  if (Array.isArray(v)) {
    if (v.length === 0) return '[]';
    return v
      .map((x) => {
        if (x !== null && typeof x === 'object' && !(Array.isArray(x) && x.length === 0)) {
          const inner = toYaml(x, indent + '  ');
          return `${indent}- ${inner.slice(indent.length + 2)}`;
        }
        return `${indent}- ${scalar(x)}`;
      })
      .join('\n');
  }
  if (v !== null && typeof v === 'object') {
    const entries = Object.entries(v).filter(([, x]) => x !== undefined);
    if (entries.length === 0) return '{}';
    return entries
      .map(([k, x]) => {
        const key = /^[A-Za-z_][A-Za-z0-9_.\-/]*$/.test(k) ? k : JSON.stringify(k);
        if (x !== null && typeof x === 'object' && (Array.isArray(x) ? x.length > 0 : Object.keys(x).length > 0))
          return `${indent}${key}:\n${toYaml(x, indent + '  ')}`;
        return `${indent}${key}: ${Array.isArray(x) ? '[]' : x !== null && typeof x === 'object' ? '{}' : scalar(x)}`;
      })
      .join('\n');
  }
  return indent + scalar(v);
}

/** A Kubernetes name from parts: lower case, [a-z0-9-], at most 63 characters. */
export function k8sName(...parts: string[]): string {
  return parts
    .join('-')
    .toLowerCase()
    .replace(/[^a-z0-9-]+/g, '-')
    .replace(/^-+|-+$/g, '')
    .slice(0, 63)
    .replace(/-+$/, '');
}

const STOP_RULES = [
  { action: 'Ignore', onExitCodes: { containerName: 'cell', operator: 'In', values: [130, 138, 143] } },
  { action: 'Ignore', onPodConditions: [{ type: 'DisruptionTarget' }] },
];

const MEBI: Record<string, number> = { K: 1 / 1024, M: 1, G: 1024, T: 1024 * 1024 };

/**
 * One pod's memory in Kubernetes units: the per-node `memory` (Slurm's --mem: "400G", "512M", "2048")
 * shared by the node's `perNode` processes, rounded down to a MiB; e.g. ("400G", 8) -> "50Gi".
 */
export function podMemory(memory: string, perNode: number): string {
  const m = /^(\d+)([KMGT]?)$/.exec(memory);
  if (!m) throw new Error(`resources.memory: expected e.g. "32G", got "${memory}"`);
  const mi = Math.floor((Number(m[1]) * MEBI[m[2] || 'M']!) / perNode);
  if (mi < 1) throw new Error(`resources.memory: "${memory}" over ${perNode} process(es) per node is under 1 MiB per pod`);
  return mi % 1024 === 0 ? `${mi / 1024}Gi` : `${mi}Mi`;
}

function podSpec(spec: SweepSpec, r: CellResources, args: string[], env: Y[], vitreg: string[]): Record<string, Y> {
  const k = spec.kubernetes;
  const volumes: Y[] = [{ name: 'runs', persistentVolumeClaim: { claimName: k.runs_claim } }];
  const mounts: Y[] = [{ name: 'runs', mountPath: spec.out }];
  if (k.data_claim) {
    volumes.push({ name: 'data', persistentVolumeClaim: { claimName: k.data_claim, readOnly: true } });
    mounts.push({ name: 'data', mountPath: k.data_mount, readOnly: true });
  }
  const limits: Record<string, Y> = {
    cpu: String(r.cpus_per_process),
    ...(r.memory ? { memory: podMemory(r.memory, Math.min(r.processes, r.processes_per_node ?? r.processes)) } : {}),
  };
  if (r.gpus_per_process > 0) limits['nvidia.com/gpu'] = r.gpus_per_process;
  return {
    restartPolicy: 'Never',
    terminationGracePeriodSeconds: 300,
    containers: [
      {
        name: 'cell',
        image: k.image,
        command: [vitreg[0]!],
        args: [...vitreg.slice(1), ...args],
        env,
        resources: { limits },
        volumeMounts: mounts,
      },
    ],
    volumes,
  };
}

/**
 * The manifests of the sweep's cells (YAML documents, each { file, text, cells }): one Indexed Job for the
 * single-process cells (index k runs the k-th of them: --index-map lists their cell indices), and a
 * Service and a Job for each multi-process cell. `vitreg` is the command in the image.
 */
export function kubernetesManifests(
  spec: SweepSpec,
  cells: Cell[],
  sweepFile: string,
  vitreg = 'vitreg',
): { file: string; text: string; cells: number[] }[] {
  const k = spec.kubernetes;
  const cmd = vitreg.split(' ').filter(Boolean);
  const meta = (name: string, extra: Record<string, Y> = {}) => ({
    name,
    ...(k.namespace ? { namespace: k.namespace } : {}),
    labels: { app: 'vitreg-sweep', 'vitreg-sweep': spec.name, ...extra },
  });
  const header = (what: string) =>
    `# vitreg sweep "${spec.name}" (${spec.file}): ${what}. Written by vitreg sweep plan.\n# kubectl apply -f <this file>; status: vitreg sweep status SWEEP.json\n`;
  const docs: { file: string; text: string; cells: number[] }[] = [];
  const single = cells.filter((c) => c.resources.processes === 1);
  if (single.length) {
    const n = single.length;
    const name = k8sName('vitreg-sweep', spec.name);
    const most = (key: 'cpus_per_process' | 'gpus_per_process') => Math.max(...single.map((c) => c.resources[key]));
    const r = { ...spec.resources, processes: 1, cpus_per_process: most('cpus_per_process'), gpus_per_process: most('gpus_per_process') };
    const map = single.map((c) => c.index).join(',');
    const all = n === cells.length && single.every((c, i) => c.index === i);
    // The pod of completion index k runs cell k (or the k-th of --index-map): run-cell reads JOB_COMPLETION_INDEX.
    const args = ['sweep', 'run-cell', sweepFile, '--launcher', 'local', ...(all ? [] : ['--index-map', map])];
    const job = {
      apiVersion: 'batch/v1',
      kind: 'Job',
      metadata: meta(name),
      spec: {
        completionMode: 'Indexed',
        completions: n,
        parallelism: Math.min(spec.max_concurrent, n),
        backoffLimitPerIndex: spec.retries,
        maxFailedIndexes: n,
        podFailurePolicy: { rules: STOP_RULES },
        template: {
          metadata: { labels: { app: 'vitreg-sweep', 'vitreg-sweep': spec.name } },
          spec: podSpec(spec, r, args, [], cmd),
        },
      },
    };
    const what = `${n} single-process cells as one Indexed Job, ${job.spec.parallelism} at once`;
    docs.push({ file: `${name}.yaml`, text: header(what) + toYaml(job) + '\n', cells: single.map((c) => c.index) });
  }
  const k8 = Math.min(spec.max_concurrent, cells.length);
  for (const [m, c] of cells.filter((x) => x.resources.processes > 1).entries()) {
    const p = c.resources.processes;
    const name = k8sName('vitreg-sweep', spec.name, String(c.index));
    const service = {
      apiVersion: 'v1',
      kind: 'Service',
      metadata: meta(name),
      spec: {
        clusterIP: 'None',
        publishNotReadyAddresses: true,
        selector: { 'job-name': name },
        ports: [{ name: 'coordinator', port: 29500, targetPort: 29500 }],
      },
    };
    const env: Y[] = [
      { name: 'MASTER_ADDR', value: `${name}-0.${name}` },
      { name: 'MASTER_PORT', value: '29500' },
      { name: 'WORLD_SIZE', value: String(p) },
      { name: 'VITREG_JOB_ID', value: name },
      { name: 'VITREG_TOKEN', valueFrom: { secretKeyRef: { name: k.token_secret, key: 'token' } } },
      { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
    ];
    const pod = podSpec(spec, c.resources, ['sweep', 'run-cell', sweepFile, '--cell', String(c.index), '--launcher', 'env'], env, cmd);
    const job = {
      apiVersion: 'batch/v1',
      kind: 'Job',
      metadata: meta(name, { 'vitreg-sweep-cell': String(c.index) }),
      spec: {
        completionMode: 'Indexed',
        completions: p,
        parallelism: p,
        // Every attempt of the cell may fail all P pods; the run-cell of attempt retries + 2 exits at once.
        backoffLimit: p * (spec.retries + 1),
        // max_concurrent: the first K start, release.sh resumes the others K at a time.
        suspend: m >= k8,
        podFailurePolicy: { rules: STOP_RULES },
        template: { metadata: { labels: { app: 'vitreg-sweep', 'vitreg-sweep': spec.name } }, spec: { subdomain: name, ...pod } },
      },
    };
    docs.push({
      file: `${name}.yaml`,
      text:
        header(`cell ${c.index} (${c.name}), a ${p}-process cluster job${m >= k8 ? ', created suspended: release.sh starts it' : ''}`) +
        toYaml(service) +
        '\n---\n' +
        toYaml(job) +
        '\n',
      cells: [c.index],
    });
  }
  return docs;
}

/**
 * release.sh of the plan (null when the multi-process cells' Jobs are at most max_concurrent K): a bash
 * script, run beside kubectl after `kubectl apply -f plan/kubernetes/`, that every VITREG_RELEASE_SECONDS
 * (default 60) counts the sweep's per-cell Jobs that run (not suspended, not Complete or Failed) and
 * resumes the next suspended ones, in cell order, until K run; it ends when none is left suspended
 * (`--once`: one pass).
 */
export function kubernetesRelease(spec: SweepSpec, cells: Cell[]): string | null {
  const multi = cells.filter((c) => c.resources.processes > 1);
  const k = Math.min(spec.max_concurrent, cells.length);
  if (multi.length <= k) return null;
  const ns = spec.kubernetes.namespace ? `(-n ${JSON.stringify(spec.kubernetes.namespace)})` : '()';
  const jsonpath =
    '{range .items[*]}{.metadata.labels.vitreg-sweep-cell} {.metadata.name} {.spec.suspend} {.status.conditions[?(@.status=="True")].type}{"\\n"}{end}';
  return [
    '#!/bin/bash',
    `# vitreg sweep "${spec.name}" (${spec.file}): starts its ${multi.length} per-cell Jobs ${k} at a time. Written by vitreg sweep plan.`,
    `# kubectl apply -f ${spec.out}/plan/kubernetes/ starts the first ${k}, the others are created suspended; then run`,
    '# this script (it polls every $VITREG_RELEASE_SECONDS, default 60 s, and ends when none is left suspended;',
    '# --once: one pass). A Job runs while it is neither suspended nor Complete / Failed. Applying the files',
    '# again suspends the Jobs past the first K again (their cells continue from their checkpoints): run this again.',
    'set -euo pipefail',
    `k=${k}`,
    `ns=${ns}`,
    `selector=${JSON.stringify(`vitreg-sweep=${spec.name},vitreg-sweep-cell`)}`,
    'while :; do',
    '  running=0',
    '  suspended=()',
    // kubectl's output first, its exit status checked (a failure inside <(...) would read as "no Jobs").
    `  if ! jobs=$(kubectl get jobs "\${ns[@]}" -l "$selector" -o jsonpath='${jsonpath}'); then`,
    `    echo "vitreg sweep ${spec.name}: kubectl get jobs failed; nothing started this round" >&2`,
    '    [[ "${1:-}" != --once ]] || exit 1',
    '    sleep "${VITREG_RELEASE_SECONDS:-60}"',
    '    continue',
    '  fi',
    '  while read -r _cell name suspend conditions; do',
    '    [[ -n "$name" ]] || continue',
    '    if [[ "$suspend" == true ]]; then',
    '      suspended+=("$name")',
    '    elif [[ ! "${conditions:-}" =~ (^| )(Complete|Failed)( |$) ]]; then',
    '      running=$((running + 1))',
    '    fi',
    '  done < <(printf \'%s\' "$jobs" | sort -n)',
    '  free=$((k - running))',
    '  ((free > 0)) || free=0',
    // ${a[@]+...}: an empty array under set -u on bash <= 4.3
    '  for name in ${suspended[@]+"${suspended[@]:0:free}"}; do',
    `    kubectl patch job "\${ns[@]}" "$name" --type=merge -p '{"spec":{"suspend":false}}' >/dev/null`,
    `    echo "vitreg sweep ${spec.name}: started $name ($running of $k were running)"`,
    '  done',
    '  if ((${#suspended[@]} <= free)); then',
    `    echo "vitreg sweep ${spec.name}: every per-cell Job is started"`,
    '    exit 0',
    '  fi',
    '  [[ "${1:-}" != --once ]] || exit 0',
    '  sleep "${VITREG_RELEASE_SECONDS:-60}"',
    'done',
    '',
  ].join('\n');
}
