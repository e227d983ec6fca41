/**
 * Who this process is in a launched job, from the launcher's variables (DESIGN.md's order):
 * torchrun / Kubeflow (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR, MASTER_PORT), then Slurm
 * (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID, SLURM_JOB_NODELIST), then a Kubernetes Indexed Job
 * (JOB_COMPLETION_INDEX, with WORLD_SIZE and MASTER_ADDR from the manifest). Flags win over all.
 */

export interface LaunchInfo {
  /** Which launcher the variables came from. */
  launcher: 'torchrun' | 'slurm' | 'kubernetes' | 'none';
  /** The launcher's rank of this process, -1 when none. */
  rank: number;
  /** Processes the launcher started, 0 when unknown. */
  worldSize: number;
  /** Index of this process on its machine, -1 when unknown. */
  localRank: number;
  /** Host of the coordinator (MASTER_ADDR, or the first Slurm node), '' when unknown. */
  masterAddr: string;
  masterPort: number;
  /** An id shared by the job's processes (TORCHELASTIC_RUN_ID, SLURM_JOB_ID, ...), '' when none. */
  jobId: string;
}

export const DEFAULT_PORT = 29500;

function intVar(env: NodeJS.ProcessEnv, name: string): number | undefined {
  const v = env[name];
  if (v === undefined || v === '') return undefined;
  if (!/^\d+$/.test(v.trim())) throw new Error(`environment variable ${name}: expected a non-negative integer, got "${v}"`);
  return Number(v.trim());
}

/** Reads the launcher's variables (see the module comment). */
export function launchInfo(env: NodeJS.ProcessEnv = process.env): LaunchInfo {
  // torchrun's static rendezvous keeps its own store listening on MASTER_PORT (it says so with
  // TORCHELASTIC_USE_AGENT_STORE=True): the coordinator then takes the next port.
  const given = intVar(env, 'MASTER_PORT') ?? DEFAULT_PORT;
  const port = env.TORCHELASTIC_USE_AGENT_STORE === 'True' ? given + 1 : given;
  if (env.RANK !== undefined && env.RANK !== '') {
    return {
      launcher: 'torchrun',
      rank: intVar(env, 'RANK')!,
      worldSize: intVar(env, 'WORLD_SIZE') ?? 0,
      localRank: intVar(env, 'LOCAL_RANK') ?? -1,
      masterAddr: env.MASTER_ADDR ?? '',
      masterPort: port,
      jobId: env.TORCHELASTIC_RUN_ID ?? '',
    };
  }
  if (env.SLURM_PROCID !== undefined && env.SLURM_PROCID !== '') {
    const nodes = env.SLURM_JOB_NODELIST ?? env.SLURM_NODELIST ?? '';
    return {
      launcher: 'slurm',
      rank: intVar(env, 'SLURM_PROCID')!,
      worldSize: intVar(env, 'SLURM_NTASKS') ?? 0,
      localRank: intVar(env, 'SLURM_LOCALID') ?? -1,
      masterAddr: env.MASTER_ADDR || (nodes ? expandHostlist(nodes)[0]! : ''),
      masterPort: port,
      jobId: env.SLURM_JOB_ID ?? '',
    };
  }
  if (env.JOB_COMPLETION_INDEX !== undefined && env.JOB_COMPLETION_INDEX !== '') {
    return {
      launcher: 'kubernetes',
      rank: intVar(env, 'JOB_COMPLETION_INDEX')!,
      worldSize: intVar(env, 'WORLD_SIZE') ?? 0,
      localRank: intVar(env, 'LOCAL_RANK') ?? 0,
      masterAddr: env.MASTER_ADDR ?? '',
      masterPort: port,
      jobId: env.VITREG_JOB_ID ?? '',
    };
  }
  return { launcher: 'none', rank: -1, worldSize: 0, localRank: -1, masterAddr: env.MASTER_ADDR ?? '', masterPort: port, jobId: '' };
}

/**
 * Expands a Slurm hostlist ("node[01-03,07],gpu-a") into host names, as `scontrol show hostnames`
 * does: ranges keep their zero padding.
 */
export function expandHostlist(list: string): string[] {
  const out: string[] = [];
  // Split on commas outside brackets.
  const parts: string[] = [];
  let depth = 0;
  let cur = '';
  for (const ch of list.trim()) {
    if (ch === '[') depth++;
    if (ch === ']') depth--;
    if (depth < 0) throw new Error(`hostlist "${list}": unbalanced "]"`);
    if (ch === ',' && depth === 0) {
      parts.push(cur);
      cur = '';
    } else cur += ch;
  }
  if (depth !== 0) throw new Error(`hostlist "${list}": unbalanced "["`);
  if (cur) parts.push(cur);
  for (const part of parts) {
    const m = /^([^[]*)\[([^\]]+)\](.*)$/.exec(part);
    if (!m) {
      if (part) out.push(part);
      continue;
    }
    const [, prefix, ranges, rest] = m;
    for (const r of ranges!.split(',')) {
      const rm = /^(\d+)(?:-(\d+))?$/.exec(r);
      if (!rm) throw new Error(`hostlist "${list}": bad range "${r}"`);
      const width = rm[1]!.length;
      const lo = Number(rm[1]);
      const hi = rm[2] === undefined ? lo : Number(rm[2]);
      if (hi < lo) throw new Error(`hostlist "${list}": range "${r}" runs backwards`);
      for (let i = lo; i <= hi; i++) {
        for (const tail of rest ? expandHostlist(rest) : ['']) out.push(`${prefix}${String(i).padStart(width, '0')}${tail}`);
      }
    }
  }
  return out;
}

/**
 * The GPU of this process: with LOCAL_RANK known, CUDA_VISIBLE_DEVICES becomes that device (the
 * LOCAL_RANK-th entry of a list the launcher set, or LOCAL_RANK itself), unless the launcher already
 * gave this process exactly one device. Must run before a CUDA backend loads.
 *
 * The WebGPU backend's adapter (VITREG_GPU, read by @vitreg/core) follows: Vulkan ignores
 * CUDA_VISIBLE_DEVICES and lists every GPU the process can open, so VITREG_GPU is the chosen device's
 * index (the CUDA_VISIBLE_DEVICES entry when numeric, else LOCAL_RANK). `gpu` (the worker's --gpu N)
 * wins over both: CUDA_VISIBLE_DEVICES=N and VITREG_GPU=N. A VITREG_GPU already set is kept.
 */
export function selectDevice(localRank: number, env: NodeJS.ProcessEnv = process.env, gpu?: number): string {
  if (gpu !== undefined) {
    if (!Number.isInteger(gpu) || gpu < 0) throw new Error(`--gpu: expected a GPU index >= 0, got ${gpu}`);
    env.CUDA_VISIBLE_DEVICES = String(gpu);
    env.VITREG_GPU = String(gpu);
    return `cuda:${gpu}`;
  }
  if (localRank < 0) return 'auto';
  const visible = env.CUDA_VISIBLE_DEVICES;
  if (visible !== undefined && visible !== '') {
    const list = visible
      .split(',')
      .map((s) => s.trim())
      .filter(Boolean);
    if (list.length === 1) {
      adapterFollows(env, list[0]!, localRank);
      return `cuda:${list[0]}`;
    }
    if (localRank >= list.length)
      throw new Error(`LOCAL_RANK ${localRank} but CUDA_VISIBLE_DEVICES lists ${list.length} devices ("${visible}")`);
    env.CUDA_VISIBLE_DEVICES = list[localRank]!;
  } else env.CUDA_VISIBLE_DEVICES = String(localRank);
  adapterFollows(env, env.CUDA_VISIBLE_DEVICES, localRank);
  return `cuda:${env.CUDA_VISIBLE_DEVICES}`;
}

/** VITREG_GPU from the chosen CUDA device (numeric entries; UUIDs fall back to LOCAL_RANK), unless set. */
function adapterFollows(env: NodeJS.ProcessEnv, device: string, localRank: number): void {
  if (env.VITREG_GPU !== undefined && env.VITREG_GPU !== '') return;
  env.VITREG_GPU = /^\d+$/.test(device) ? device : String(localRank);
}
