/**
 * Hosts of their own on one machine, for tests and benches (as root, Linux, iproute2): N network
 * namespaces on a bridge, one veth link each, addresses in one private /24 (10.231.17.0/24, inside
 * the namespaces only: the bridge has no address, so nothing of the machine routes there), each link
 * capped with `tbf` at a given rate in both directions (tc shapes egress only: the host side of the
 * veth caps what a host receives, the namespace side what it sends; MTU 1500, so TCP carries at most
 * 1448 / 1514 = 0.956 of the rate as payload). A host runs processes with
 * `ip netns exec`; it sees the machine's files, as NFS would be on a cluster.
 *
 *   const hosts = Hosts.create({ hosts: 3, linkMbit: 1000 });
 *   try {
 *     const w = hosts.launchWorker(1, ['--config', cfg, '--out', out]);   // RANK=1, MASTER_ADDR=host 0, ...
 *     hosts.cut(1); hosts.heal(1);                   // host 1's link down / up
 *     hosts.partition(1, 2); hosts.join(1, 2);       // only hosts 1 and 2 stop reaching each other
 *   } finally {
 *     hosts.destroy();                               // processes, namespaces, veths, bridge
 *   }
 *
 * Cleanup is guaranteed three ways: `destroy()` in a finally; a process 'exit' hook (and SIGINT /
 * SIGTERM / SIGHUP handlers that destroy, then exit) for a test that throws or is interrupted; and
 * names that carry a run id and the owner's pid (`vitreg-<pid>-<id>-<i>`, links `vrb<id>` and
 * `vrh<id><i>`), so a leftover of a killed run never collides and the next `create` removes it
 * (its processes, namespaces and links) once its owner is gone.
 */
import { execFileSync, spawn, type ChildProcess, type SpawnOptions } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { childNodeArgs } from '@vitreg/core';

/** The /24 every topology uses inside its namespaces (hosts are .1, .2, ...). */
export const SUBNET = '10.231.17';
/** The port the hosted coordinator listens on (each host has its own ports). */
export const MASTER_PORT = 29500;

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..');
const WORKER_MAIN = join(ROOT, 'apps/worker/src/main.ts');
const NS_PATTERN = /^vitreg-(\d+)-([0-9a-f]{6})-\d+$/;
const LINK_PATTERN = /^vr[bh]([0-9a-f]{6})/;

function sh(cmd: string, args: string[], input?: string): string {
  return execFileSync(cmd, args, { encoding: 'utf8', stdio: ['pipe', 'pipe', 'pipe'], input });
}

function quiet(cmd: string, args: string[]): void {
  try {
    sh(cmd, args);
  } catch {
    // already gone
  }
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

let unavailable: string | null | undefined;

/**
 * Null where namespaces can be made here, else one line saying why not (tests skip with it): not
 * Linux, not root, no `ip` or `tc`, namespaces refused (a container without CAP_SYS_ADMIN), or the
 * /24 already used by an address or route of this machine.
 */
export function netnsUnavailable(): string | null {
  if (unavailable !== undefined) return unavailable;
  unavailable = probe();
  return unavailable;
}

function probe(): string | null {
  if (process.platform !== 'linux') return 'network namespaces need Linux';
  if (process.getuid?.() !== 0) return 'network namespaces need root (CI runs as root)';
  for (const [cmd, flag] of [
    ['ip', '-V'],
    ['tc', '-V'],
  ] as const) {
    try {
      sh(cmd, [flag]);
    } catch {
      return `the ${cmd} command is missing: apt-get install -y iproute2`;
    }
  }
  const used = sh('ip', ['-4', '-o', 'addr']) + sh('ip', ['-4', 'route', 'show', 'table', 'all']);
  if (used.includes(`${SUBNET}.`))
    return `${SUBNET}.0/24 is already used on this machine (ip addr / ip route): the host tests need it free`;
  const name = `vitreg-${process.pid}-${randomBytes(3).toString('hex')}-probe`;
  try {
    sh('ip', ['netns', 'add', name]);
    sh('ip', ['-n', name, 'link', 'add', 'probe0', 'type', 'veth', 'peer', 'name', 'probe1']);
    sh('tc', ['-n', name, 'qdisc', 'add', 'dev', 'probe0', 'root', 'tbf', 'rate', '100mbit', 'burst', '64kb', 'latency', '100ms']);
    return null;
  } catch (e) {
    const why = String((e as { stderr?: string }).stderr ?? (e as Error).message)
      .trim()
      .split('\n')[0];
    return `cannot make a network namespace with a tbf-capped veth here (${why})`;
  } finally {
    quiet('ip', ['netns', 'del', name]);
  }
}

/**
 * What of hosts `h` is on the machine now, by name, sorted: namespaces `vitreg-<this pid>-<id>-*` and links
 * `vrb<id>` / `vrh<id>*` (empty after `destroy()`).
 */
export function leftoversOf(h: Hosts): { namespaces: string[]; links: string[] } {
  const prefix = `vitreg-${process.pid}-${h.id}-`;
  const namespaces = sh('ip', ['netns', 'list'])
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter((n) => n.startsWith(prefix));
  const links = sh('ip', ['-o', 'link'])
    .split('\n')
    .map((l) => /^\d+:\s+([^:@]+)/.exec(l)?.[1] ?? '')
    .filter((n) => n === `vrb${h.id}` || n.startsWith(`vrh${h.id}`));
  return { namespaces: namespaces.sort(), links: links.sort() };
}

/**
 * Removes what runs whose owner process is gone left behind (killed with SIGKILL, so no hook ran):
 * their processes, namespaces and links.
 */
export function sweepLeftovers(): void {
  const live = new Set<string>();
  const namespaces = sh('ip', ['netns', 'list'])
    .split('\n')
    .map((l) => l.trim().split(/\s+/)[0] ?? '')
    .filter(Boolean);
  for (const ns of namespaces) {
    const m = NS_PATTERN.exec(ns);
    if (!m) continue;
    if (alive(Number(m[1]))) {
      live.add(m[2]!);
      continue;
    }
    killInside(ns);
    quiet('ip', ['netns', 'del', ns]);
  }
  for (const line of sh('ip', ['-o', 'link']).split('\n')) {
    const name = /^\d+:\s+([^:@]+)/.exec(line)?.[1];
    const m = name ? LINK_PATTERN.exec(name) : null;
    if (m && !live.has(m[1]!)) quiet('ip', ['link', 'del', name!]);
  }
}

function killInside(ns: string): void {
  let pids: string[];
  try {
    pids = sh('ip', ['netns', 'pids', ns]).split('\n').filter(Boolean);
  } catch {
    return;
  }
  for (const p of pids) {
    try {
      process.kill(Number(p), 'SIGKILL');
    } catch {
      // gone
    }
  }
}

const live = new Set<Hosts>();
let hooked = false;

function hookExit(): void {
  if (hooked) return;
  hooked = true;
  process.on('exit', () => {
    for (const h of [...live]) h.destroy();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      for (const h of [...live]) h.destroy();
      process.exit(sig === 'SIGINT' ? 130 : sig === 'SIGTERM' ? 143 : 129);
    });
  }
}

export interface HostsOptions {
  /** Hosts (namespaces). */
  hosts: number;
  /** Each link's rate in Mbit/s (both directions); 0 or absent: no cap. */
  linkMbit?: number;
}

/** A process started in a host: its output so far and its end. */
export interface HostProcess {
  child: ChildProcess;
  host: number;
  stdout: () => string;
  stderr: () => string;
  /** Resolves when it exited: code, signal, and milliseconds since it started. */
  exit: Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>;
}

export class Hosts {
  /** Namespace names, one per host. */
  readonly names: string[];
  /** Each host's address. */
  readonly addresses: string[];
  readonly bridge: string;
  private readonly veths: string[];
  private readonly children = new Set<ChildProcess>();
  private destroyed = false;

  private constructor(
    readonly id: string,
    readonly count: number,
    readonly linkMbit: number,
  ) {
    this.names = Array.from({ length: count }, (_, i) => `vitreg-${process.pid}-${id}-${i}`);
    this.addresses = Array.from({ length: count }, (_, i) => `${SUBNET}.${i + 1}`);
    this.bridge = `vrb${id}`;
    this.veths = Array.from({ length: count }, (_, i) => `vrh${id}${i}`);
  }

  /** Makes the hosts (see the module comment); throws with netnsUnavailable()'s reason where it cannot. */
  static create(o: HostsOptions): Hosts {
    const why = netnsUnavailable();
    if (why) throw new Error(why);
    if (!Number.isInteger(o.hosts) || o.hosts < 1 || o.hosts > 200) throw new Error(`hosts: 1..200, got ${o.hosts}`);
    sweepLeftovers();
    hookExit();
    const h = new Hosts(randomBytes(3).toString('hex'), o.hosts, o.linkMbit ?? 0);
    live.add(h);
    try {
      h.build();
    } catch (e) {
      h.destroy();
      throw e;
    }
    return h;
  }

  private build(): void {
    sh('ip', ['link', 'add', this.bridge, 'type', 'bridge']);
    sh('ip', ['link', 'set', this.bridge, 'up']);
    for (let i = 0; i < this.count; i++) {
      const ns = this.names[i]!;
      const veth = this.veths[i]!;
      sh('ip', ['netns', 'add', ns]);
      sh('ip', ['link', 'add', veth, 'type', 'veth', 'peer', 'name', 'eth0', 'netns', ns]);
      sh('ip', ['link', 'set', veth, 'master', this.bridge, 'up']);
      sh('ip', ['-n', ns, 'addr', 'add', `${this.addresses[i]}/24`, 'dev', 'eth0']);
      sh('ip', ['-n', ns, 'link', 'set', 'eth0', 'up']);
      sh('ip', ['-n', ns, 'link', 'set', 'lo', 'up']);
      if (this.linkMbit > 0) {
        // Both directions: the namespace side shapes what the host sends, the bridge side what it receives.
        // The bucket holds 10 ms of the rate: smaller ones lose throughput whenever the kernel's timer
        // runs late on a busy machine (a 64 KiB bucket cost a 200 Mbit/s link ring 10%), while over an
        // all-reduce of seconds the bucket can add at most 10 ms of extra bytes after an idle moment.
        const bytesPerS = (this.linkMbit * 1e6) / 8;
        const burst = `${Math.max(64 * 1024, Math.round(bytesPerS / 100))}b`;
        const tbf = ['root', 'tbf', 'rate', `${this.linkMbit}mbit`, 'burst', burst, 'latency', '100ms'];
        sh('tc', ['-n', ns, 'qdisc', 'add', 'dev', 'eth0', ...tbf]);
        sh('tc', ['qdisc', 'add', 'dev', veth, ...tbf]);
      }
    }
  }

  /** Starts `cmd args` in host `i` (`ip netns exec`); the process is killed by destroy(). */
  spawn(i: number, cmd: string, args: string[], opts: SpawnOptions = {}): ChildProcess {
    this.check(i);
    const child = spawn('ip', ['netns', 'exec', this.names[i]!, cmd, ...args], opts);
    this.children.add(child);
    child.once('exit', () => this.children.delete(child));
    return child;
  }

  /** Runs `cmd args` in host `i` to its end; returns its stdout (throws on a non-zero exit). */
  run(i: number, cmd: string, args: string[]): string {
    this.check(i);
    return sh('ip', ['netns', 'exec', this.names[i]!, cmd, ...args]);
  }

  /**
   * Starts `vitreg-worker` (from this clone's sources) in host `i` as a launcher would on machine i:
   * RANK=i, WORLD_SIZE=hosts, LOCAL_RANK=0, MASTER_ADDR=host 0's address, MASTER_PORT, the job
   * token in VITREG_TOKEN, and `--advertise`/`--bind` its own address. Rank 0 hosts the coordinator.
   */
  launchWorker(
    i: number,
    args: string[],
    o: { token: string; env?: Record<string, string>; rank?: number; worldSize?: number } = { token: 'netns' },
  ): HostProcess {
    const env: NodeJS.ProcessEnv = {};
    for (const [k, v] of Object.entries(process.env)) {
      if (
        /^(RANK|WORLD_SIZE|LOCAL_RANK|MASTER_ADDR|MASTER_PORT|VITREG_.*|SLURM_.*|TORCHELASTIC_.*|NODE_OPTIONS|NODE_TEST_CONTEXT)$/.test(k)
      )
        continue;
      env[k] = v;
    }
    Object.assign(env, {
      RANK: String(o.rank ?? i),
      WORLD_SIZE: String(o.worldSize ?? this.count),
      LOCAL_RANK: '0',
      MASTER_ADDR: this.addresses[0]!,
      MASTER_PORT: String(MASTER_PORT),
      VITREG_TOKEN: o.token,
      ...o.env,
    });
    const nodeArgs = childNodeArgs(WORKER_MAIN, ['--conditions=vitreg-source', '--import', import.meta.resolve('tsx')]);
    const address = this.addresses[i]!;
    const t0 = Date.now();
    const child = this.spawn(i, process.execPath, [...nodeArgs, ...args, '--advertise', address, '--bind', address], {
      env,
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let out = '';
    let err = '';
    child.stdout!.setEncoding('utf8').on('data', (d: string) => (out += d));
    child.stderr!.setEncoding('utf8').on('data', (d: string) => (err += d));
    const exit = new Promise<{ code: number | null; signal: NodeJS.Signals | null; ms: number }>((resolve) =>
      child.once('close', (code, signal) => resolve({ code, signal, ms: Date.now() - t0 })),
    );
    return { child, host: i, stdout: () => out, stderr: () => err, exit };
  }

  /** Host `i`'s link down: it reaches no other host, and none reaches it (its own address still works locally). */
  cut(i: number): void {
    this.check(i);
    sh('ip', ['-n', this.names[i]!, 'link', 'set', 'eth0', 'down']);
  }

  /** Host `i`'s link up again. */
  heal(i: number): void {
    this.check(i);
    sh('ip', ['-n', this.names[i]!, 'link', 'set', 'eth0', 'up']);
  }

  /**
   * Only hosts `i` and `j` stop reaching each other; both still reach every other host. Each host's
   * neighbour entry for the other points at a MAC address no host has, so their packets to each
   * other vanish in the bridge without an error, as on a network whose path between two machines
   * broke (no iptables needed: iproute2's `ip neigh`).
   */
  partition(i: number, j: number): void {
    this.check(i);
    this.check(j);
    for (const [a, b] of [
      [i, j],
      [j, i],
    ] as const) {
      sh('ip', [
        '-n',
        this.names[a]!,
        'neigh',
        'replace',
        this.addresses[b]!,
        'lladdr',
        '02:00:00:00:de:ad',
        'dev',
        'eth0',
        'nud',
        'permanent',
      ]);
    }
  }

  /** Ends partition(i, j). */
  join(i: number, j: number): void {
    for (const [a, b] of [
      [i, j],
      [j, i],
    ] as const) {
      quiet('ip', ['-n', this.names[a]!, 'neigh', 'del', this.addresses[b]!, 'dev', 'eth0']);
    }
  }

  /**
   * Removes everything: kills the processes started here and any other process inside the
   * namespaces, deletes the namespaces, the veths and the bridge. Synchronous (it also runs from the
   * 'exit' hook); safe to call twice.
   */
  destroy(): void {
    if (this.destroyed) return;
    this.destroyed = true;
    live.delete(this);
    for (const c of this.children) {
      try {
        c.kill('SIGKILL');
      } catch {
        // gone
      }
    }
    for (const ns of this.names) {
      killInside(ns);
      quiet('ip', ['netns', 'del', ns]);
    }
    for (const v of this.veths) quiet('ip', ['link', 'del', v]);
    quiet('ip', ['link', 'del', this.bridge]);
  }

  private check(i: number): void {
    if (this.destroyed) throw new Error('these hosts were destroyed');
    if (!Number.isInteger(i) || i < 0 || i >= this.count) throw new Error(`host ${i}: there are hosts 0..${this.count - 1}`);
  }
}
