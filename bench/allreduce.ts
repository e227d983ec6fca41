/**
 * `npm run bench -- allreduce [--workers 2,4,8 | --hosts 2,3,4 --link-mbit 100,1000] [--mb 100]
 *   [--transport tcp|grpc|tcp,grpc] [--wire f32|bf16] [--repeat 3] [--chunk-kb 1024] [--bucket-mb 25] [--cpu-prof DIR]`
 * Ring all-reduce between N processes on loopback, or (--hosts) between N hosts of their own: network
 * namespaces on a bridge whose links are capped at --link-mbit in both directions (test/netns.ts; root),
 * one process per host, each at its own address. It uses the worker's own data plane (@vitreg/worker:
 * connectTcpLink + acceptTcpLink + Inbox, or GrpcOutLink + a PushChunks server on PeerService; ringAllReduce),
 * `mb` MiB of float32 per process, different values per rank. One warm-up all-reduce, then `repeat`
 * timed ones; every result is checked exactly against the closed-form sum (bench/_allreduce-rank.ts).
 * The ceiling `tcp_gbps` is measured in the same run: `mb` MiB copied between two processes over one
 * socket (net, 1 MiB writes), median of `repeat`: on loopback, or from host 0 to host 1 through the
 * same capped links. One JSON line per (transport, N[, rate]): seconds (median; an all-reduce's time
 * is its slowest rank's), algbw_gbps = bytes / seconds / 1e9, bus_gbps = algbw * 2 (N - 1) / N
 * (nccl-tests' bus bandwidth: the bytes each link carries each way per second; GB/s), ratio = bus /
 * tcp; with --hosts also link_gbps (the cap in GB/s), bus_over_link, tcp_over_link and tcp_ring_gbps:
 * every host streaming the all-reduce's per-link bytes to its successor at once with plain sockets
 * (the ring's traffic without the all-reduce: what this machine's kernel and cores carry), one round of
 * it right after each all-reduce so that both meet the same load on a shared machine; bus_over_tcp_ring
 * (medians) and bus_over_tcp_ring_paired (the median of each all-reduce over the round after it) are the
 * fair figures where the plain ring itself falls short of the link. CPU per byte: rank_cpu_s_per_gb
 * (a rank's user + system CPU seconds per GB it sent; it received as many) beside tcp_ring_cpu_s_per_gb
 * (the same for a plain-socket host: the kernel's copies and TCP work alone; softirq time spent outside
 * the process is not counted in either). `cpus` is
 * nproc: N > cpus oversubscribes the CPU. --cpu-prof DIR writes a V8 CPU profile of rank 0. `mb`
 * defaults to 100 on loopback and to 0.2 x the link rate in Mbit/s with --hosts (20 MiB at 100
 * Mbit/s: about 2 s per all-reduce). --wire bf16 sends bfloat16 (--grad-compression bf16); the check
 * is then against the closed form rounded as the ring rounds (exact for these values).
 */
import { fork, type ChildProcess } from 'node:child_process';
import { availableParallelism, loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { Hosts, netnsUnavailable } from '../test/netns.js';

const here = dirname(fileURLToPath(import.meta.url));
const script = join(here, '_allreduce-rank.ts');
const usage =
  'Usage: npm run bench -- allreduce [--workers 2,4,8 | --hosts 2,3,4 --link-mbit 100,1000] [--mb 100] [--transport tcp|grpc|tcp,grpc]\n' +
  '  [--wire f32|bf16] [--repeat 3] [--chunk-kb 1024] [--bucket-mb 25] [--cpu-prof DIR]\n';

type Msg = Record<string, unknown> & { type: string };
/** Starts one bench process (a rank, the sink or the source) with this argv and an IPC channel. */
type Start = (args: string[], execArgv: string[]) => ChildProcess;

const local: Start = (args, execArgv) => fork(script, args, { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });

/** In host `i` of `hosts` (ip netns exec), the same process. */
function inHost(hosts: Hosts, i: number): Start {
  return (args, execArgv) =>
    hosts.spawn(i, process.execPath, [...execArgv, script, ...args], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
}

class Child {
  private queue: Msg[] = [];
  private waiters: ((m: Msg) => void)[] = [];
  private failure: Error | null = null;
  readonly proc: ChildProcess;
  constructor(role: string, cfg: object, execArgv: string[], start: Start = local) {
    this.proc = start([role, JSON.stringify(cfg)], execArgv);
    this.proc.on('message', (m: Msg) => {
      if (m.type === 'error') return this.fail(new Error(`${role}: ${m.message as string}`));
      const w = this.waiters.shift();
      if (w) w(m);
      else this.queue.push(m);
    });
    this.proc.on('exit', (code, signal) => {
      if (code !== 0) this.fail(new Error(`${role} exited with ${code ?? signal}`));
    });
  }
  private fail(err: Error): void {
    this.failure ??= err;
    for (const w of this.waiters.splice(0)) w({ type: 'error', message: err.message });
  }
  async next(): Promise<Msg> {
    const m = this.queue.length
      ? this.queue.shift()!
      : this.failure
        ? { type: 'error' }
        : await new Promise<Msg>((r) => this.waiters.push(r));
    if (m.type === 'error') throw this.failure ?? new Error(String(m.message));
    return m;
  }
  send(m: Msg): void {
    this.proc.send(m);
  }
  exited(): Promise<void> {
    return new Promise((r) => (this.proc.exitCode !== null || this.proc.signalCode !== null ? r() : this.proc.once('exit', () => r())));
  }
}

const median = (xs: number[]) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};

/** The raw TCP stream: `floats * 4` bytes per round from the source to the sink (host 0 to host 1 with `hosts`). */
async function tcpCeiling(floats: number, repeat: number, hosts?: Hosts): Promise<number[]> {
  const cfg = { floats, repeat, host: hosts ? hosts.addresses[1] : '127.0.0.1' };
  const sink = new Child('sink', cfg, process.execArgv, hosts ? inHost(hosts, 1) : local);
  const source = new Child('source', cfg, process.execArgv, hosts ? inHost(hosts, 0) : local);
  try {
    const { port } = await sink.next();
    source.send({ type: 'connect', port });
    const { times } = await source.next();
    sink.send({ type: 'exit' });
    await Promise.all([sink.exited(), source.exited()]);
    return times as number[];
  } finally {
    for (const c of [sink, source]) if (c.proc.exitCode === null) c.proc.kill();
  }
}

/** Processes started for a measurement: one timed round at a time, then closed (or killed on a failure). */
interface Rounds<R> {
  round(iter: number): Promise<R>;
  close(): Promise<void>;
  kill(): void;
}

function closer(ps: Child[]): Pick<Rounds<unknown>, 'close' | 'kill'> {
  return {
    close: async () => {
      for (const c of ps) c.send({ type: 'exit' });
      await Promise.all(ps.map((c) => c.exited()));
    },
    kill: () => {
      for (const c of ps) if (c.proc.exitCode === null) c.proc.kill();
    },
  };
}

/**
 * The ring's traffic without the all-reduce (--hosts): every host streams `floats * 4` bytes to its
 * successor while receiving as many; a round's time is its slowest host's, `cpu` the mean CPU seconds
 * of a host's process.
 */
async function streamRing(hosts: Hosts, size: number, floats: number): Promise<Rounds<{ seconds: number; cpu: number }>> {
  const cfg = (i: number) => ({ floats, repeat: 0, host: hosts.addresses[i] });
  const ps = Array.from({ length: size }, (_, i) => new Child('stream', cfg(i), process.execArgv, inHost(hosts, i)));
  const { close, kill } = closer(ps);
  try {
    const ports = (await Promise.all(ps.map((c) => c.next()))).map((m) => m.port as number);
    ps.forEach((c, i) => c.send({ type: 'connect', port: ports[(i + 1) % size]!, host: hosts.addresses[(i + 1) % size]! }));
    await Promise.all(ps.map((c) => c.next()));
  } catch (e) {
    kill();
    throw e;
  }
  return {
    round: async () => {
      for (const c of ps) c.send({ type: 'go' });
      const done = await Promise.all(ps.map((c) => c.next()));
      return { seconds: Math.max(...done.map((d) => d.seconds as number)), cpu: done.reduce((a, d) => a + (d.cpu as number), 0) / size };
    },
    close,
    kill,
  };
}

interface RingRound {
  /** The slowest rank's seconds. */
  seconds: number;
  perRank: number[];
  /** Mean CPU seconds (user + system) of a rank, and of its user part. */
  cpu: number;
  user: number;
}

async function ringRanks(o: {
  size: number;
  floats: number;
  transport: 'tcp' | 'grpc';
  wire: 'f32' | 'bf16';
  chunkBytes: number;
  bucketBytes: number;
  cpuProf?: string;
  hosts?: Hosts;
}): Promise<Rounds<RingRound>> {
  const ranks: Child[] = [];
  const hostOf = (rank: number) => o.hosts?.addresses[rank] ?? '127.0.0.1';
  for (let rank = 0; rank < o.size; rank++) {
    const execArgv = rank === 0 && o.cpuProf ? [...process.execArgv, '--cpu-prof', `--cpu-prof-dir=${o.cpuProf}`] : process.execArgv;
    const { size, floats, transport, wire, chunkBytes, bucketBytes } = o;
    const cfg = { rank, size, floats, transport, wire, chunkBytes, bucketBytes, host: hostOf(rank) };
    ranks.push(new Child('rank', cfg, execArgv, o.hosts ? inHost(o.hosts, rank) : local));
  }
  const { close, kill } = closer(ranks);
  try {
    const ports = (await Promise.all(ranks.map((c) => c.next()))).map((m) => m.port as number);
    ranks.forEach((c, r) => c.send({ type: 'connect', port: ports[(r + 1) % o.size]!, host: hostOf((r + 1) % o.size) }));
    await Promise.all(ranks.map((c) => c.next()));
  } catch (e) {
    kill();
    throw e;
  }
  return {
    round: async (iter) => {
      for (const c of ranks) c.send({ type: 'run', iter });
      await Promise.all(ranks.map((c) => c.next()));
      for (const c of ranks) c.send({ type: 'go', iter });
      const done = await Promise.all(ranks.map((c) => c.next()));
      for (const [r, d] of done.entries()) {
        if ((d.bad as number) > 0)
          throw new Error(
            `all-reduce ${iter}: rank ${r} has ${d.bad as number} wrong values (first at index ${d.firstBad as number}: ${d.got as number})`,
          );
      }
      const perRank = done.map((d) => d.seconds as number);
      return {
        seconds: Math.max(...perRank),
        perRank,
        cpu: done.reduce((a, d) => a + (d.cpu as number), 0) / done.length,
        user: done.reduce((a, d) => a + (d.cpuUser as number), 0) / done.length,
      };
    },
    close,
    kill,
  };
}

/**
 * One warm-up and `repeat` timed all-reduces; with --hosts each followed by a round of the plain-socket
 * ring carrying the same per-link bytes, so both see the same moment of this shared machine's load.
 */
async function measure(
  o: Parameters<typeof ringRanks>[0] & { repeat: number },
): Promise<{ ring: RingRound[]; stream: { seconds: number; cpu: number }[] }> {
  const ranks = await ringRanks(o);
  let streams: Rounds<{ seconds: number; cpu: number }> | null = null;
  try {
    // The same per-link bytes as the all-reduce, streamed by every host at once.
    if (o.hosts) streams = await streamRing(o.hosts, o.size, Math.round((o.floats * 2 * (o.size - 1)) / o.size));
    const ring: RingRound[] = [];
    const stream: { seconds: number; cpu: number }[] = [];
    for (let iter = 0; iter <= o.repeat; iter++) {
      const r = await ranks.round(iter);
      const t = streams ? await streams.round(iter) : null;
      if (iter === 0) continue;
      ring.push(r);
      if (t) stream.push(t);
    }
    await ranks.close();
    await streams?.close();
    return { ring, stream };
  } finally {
    ranks.kill();
    streams?.kill();
  }
}

const list = (flag: string, text: string, min: number): number[] => {
  const xs = text.split(',').map(Number);
  for (const n of xs) if (!Number.isFinite(n) || n < min) throw new Error(`${flag}: numbers >= ${min}, got ${text}`);
  return xs;
};

export async function run(argv: string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(usage);
    return;
  }
  const { values } = parseArgs({
    args: argv,
    options: {
      workers: { type: 'string', default: '2,4,8' },
      hosts: { type: 'string' },
      'link-mbit': { type: 'string', default: '1000' },
      mb: { type: 'string' },
      transport: { type: 'string', default: 'tcp' },
      wire: { type: 'string', default: 'f32' },
      repeat: { type: 'string', default: '3' },
      'chunk-kb': { type: 'string', default: '1024' },
      'bucket-mb': { type: 'string', default: '25' },
      'cpu-prof': { type: 'string' },
    },
  });
  const onHosts = values.hosts !== undefined;
  const sizes = list(onHosts ? '--hosts' : '--workers', onHosts ? values.hosts! : values.workers!, 2);
  for (const n of sizes) if (!Number.isInteger(n)) throw new Error(`--workers/--hosts: integers >= 2, got ${n}`);
  const rates = onHosts ? list('--link-mbit', values['link-mbit']!, 1) : [0];
  const transports = values.transport!.split(',') as ('tcp' | 'grpc')[];
  for (const t of transports) if (t !== 'tcp' && t !== 'grpc') throw new Error(`--transport ${t}: tcp or grpc`);
  const wire = values.wire as 'f32' | 'bf16';
  if (wire !== 'f32' && wire !== 'bf16') throw new Error(`--wire ${wire}: f32 or bf16`);
  if (onHosts) {
    const why = netnsUnavailable();
    if (why) throw new Error(`--hosts: ${why}`);
  }
  const repeat = Math.max(1, Number(values.repeat));
  const chunkBytes = Math.round(Number(values['chunk-kb']) * 1024);
  const bucketBytes = Math.round(Number(values['bucket-mb']) * 2 ** 20);
  const cpus = availableParallelism();
  for (const rate of rates) {
    const mb = values.mb !== undefined ? Number(values.mb) : onHosts ? Math.max(1, Math.round(rate * 0.2)) : 100;
    const floats = Math.floor((mb * 2 ** 20) / 4);
    const bytes = floats * 4;
    const hosts = onHosts ? Hosts.create({ hosts: Math.max(...sizes), linkMbit: rate }) : undefined;
    try {
      const tcpTimes = await tcpCeiling(floats, repeat, hosts);
      const tcpGbps = bytes / median(tcpTimes) / 1e9;
      for (const transport of transports) {
        for (const size of sizes) {
          const m = await measure({
            size,
            floats,
            transport,
            wire,
            chunkBytes,
            bucketBytes,
            repeat,
            hosts,
            cpuProf: values['cpu-prof'] ? resolve(values['cpu-prof']) : undefined,
          });
          const times = m.ring.map((r) => r.seconds);
          const seconds = median(times);
          const algbw = bytes / seconds / 1e9;
          const bus = (algbw * 2 * (size - 1)) / size;
          const link = rate / 8000;
          // Bytes each process sends (and receives) per all-reduce: 2 (N - 1) / N of the buffer, halved on a bf16 wire.
          const perLink = ((bytes * 2 * (size - 1)) / size) * (wire === 'bf16' ? 0.5 : 1);
          const streamBytes = Math.round((floats * 2 * (size - 1)) / size) * 4;
          const streamTimes = m.stream.map((t) => t.seconds);
          const ringTcp = hosts ? streamBytes / median(streamTimes) / 1e9 : 0;
          // Per round, the all-reduce's bus bandwidth over the plain ring's right after it; the median of those.
          const busBytes = (bytes * 2 * (size - 1)) / size;
          const pairs = m.stream.map((t, i) => busBytes / m.ring[i]!.seconds / (streamBytes / t.seconds));
          process.stdout.write(
            JSON.stringify({
              case: 'allreduce',
              transport,
              wire,
              ...(onHosts ? { hosts: size, link_mbit: rate } : { workers: size }),
              mb,
              bytes,
              chunk_bytes: chunkBytes,
              bucket_bytes: bucketBytes,
              seconds: +seconds.toFixed(4),
              times: times.map((t) => +t.toFixed(4)),
              algbw_gbps: +algbw.toFixed(4),
              bus_gbps: +bus.toFixed(4),
              ...(onHosts ? { link_gbps: +link.toFixed(4), bus_over_link: +(bus / link).toFixed(3) } : {}),
              tcp_gbps: +tcpGbps.toFixed(4),
              ...(onHosts ? { tcp_over_link: +(tcpGbps / link).toFixed(3) } : {}),
              tcp_times: tcpTimes.map((t) => +t.toFixed(4)),
              ...(hosts
                ? {
                    tcp_ring_gbps: +ringTcp.toFixed(4),
                    tcp_ring_times: streamTimes.map((t) => +t.toFixed(4)),
                    bus_over_tcp_ring: +(bus / ringTcp).toFixed(3),
                    bus_over_tcp_ring_paired: +median(pairs).toFixed(3),
                    tcp_ring_cpu_s_per_gb: +(median(m.stream.map((t) => t.cpu)) / (streamBytes / 1e9)).toFixed(3),
                  }
                : {}),
              ratio: +(bus / tcpGbps).toFixed(3),
              // User + system CPU seconds of one rank's process per second of all-reduce (mean over ranks; the kernel's network work in softirq is not all counted).
              rank_cpu_load: +(median(m.ring.map((r) => r.cpu)) / seconds).toFixed(3),
              rank_cpu_user: +(median(m.ring.map((r) => r.user)) / seconds).toFixed(3),
              // A rank's CPU seconds per GB it sent (it received as many and added or copied them).
              rank_cpu_s_per_gb: +(median(m.ring.map((r) => r.cpu)) / (perLink / 1e9)).toFixed(3),
              cpus,
              loadavg_1m: +loadavg()[0]!.toFixed(2),
              oversubscribed: size > cpus,
              checked: 'every index, exact',
            }) + '\n',
          );
        }
      }
    } finally {
      hosts?.destroy();
    }
  }
}
