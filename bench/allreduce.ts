/**
 * `npm run bench -- allreduce [--workers 2,4,8] [--mb 100] [--transport tcp|grpc|tcp,grpc] [--repeat 3]
 *   [--chunk-kb 1024] [--bucket-mb 25] [--cpu-prof DIR]`
 * Ring all-reduce between N processes on loopback with the worker's own data plane (@vitreg/worker:
 * connectTcpLink + acceptTcpLink + Inbox, or GrpcOutLink + a PushChunks server on PeerService; ringAllReduce),
 * `mb` MiB of float32 per process, different values per rank. One warm-up all-reduce, then `repeat`
 * timed ones; every result is checked exactly against the closed-form sum (bench/_allreduce-rank.ts).
 * The ceiling `tcp_gbps` is measured in the same run: `mb` MiB copied between two processes over one
 * loopback socket (net, 1 MiB writes), median of `repeat`. One JSON line per (transport, N):
 * seconds (median; an all-reduce's time is its slowest rank's), algbw_gbps = bytes / seconds / 1e9,
 * bus_gbps = algbw * 2 (N - 1) / N (the bytes each link carries), ratio = bus / tcp. `cpus` is nproc:
 * N > cpus oversubscribes the CPU. --cpu-prof DIR writes a V8 CPU profile of rank 0.
 */
import { fork, type ChildProcess } from 'node:child_process';
import { availableParallelism, loadavg } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const script = join(here, '_allreduce-rank.ts');
const usage =
  'Usage: npm run bench -- allreduce [--workers 2,4,8] [--mb 100] [--transport tcp|grpc|tcp,grpc] [--repeat 3] [--chunk-kb 1024] [--bucket-mb 25] [--cpu-prof DIR]\n';

type Msg = Record<string, unknown> & { type: string };

class Child {
  private queue: Msg[] = [];
  private waiters: ((m: Msg) => void)[] = [];
  private failure: Error | null = null;
  readonly proc: ChildProcess;
  constructor(role: string, cfg: object, execArgv: string[]) {
    this.proc = fork(script, [role, JSON.stringify(cfg)], { execArgv, stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
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

async function tcpCeiling(floats: number, repeat: number): Promise<number[]> {
  const cfg = { floats, repeat };
  const sink = new Child('sink', cfg, process.execArgv);
  const source = new Child('source', cfg, process.execArgv);
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

async function ring(o: {
  size: number;
  floats: number;
  transport: 'tcp' | 'grpc';
  chunkBytes: number;
  bucketBytes: number;
  repeat: number;
  cpuProf?: string;
}): Promise<{ times: number[]; perRank: number[][] }> {
  const ranks: Child[] = [];
  for (let rank = 0; rank < o.size; rank++) {
    const execArgv = rank === 0 && o.cpuProf ? [...process.execArgv, '--cpu-prof', `--cpu-prof-dir=${o.cpuProf}`] : process.execArgv;
    ranks.push(
      new Child(
        'rank',
        { rank, size: o.size, floats: o.floats, transport: o.transport, chunkBytes: o.chunkBytes, bucketBytes: o.bucketBytes },
        execArgv,
      ),
    );
  }
  try {
    const ports = (await Promise.all(ranks.map((c) => c.next()))).map((m) => m.port as number);
    ranks.forEach((c, r) => c.send({ type: 'connect', port: ports[(r + 1) % o.size]! }));
    await Promise.all(ranks.map((c) => c.next()));
    const times: number[] = [];
    const perRank: number[][] = [];
    for (let iter = 0; iter <= o.repeat; iter++) {
      for (const c of ranks) c.send({ type: 'run', iter });
      const done = await Promise.all(ranks.map((c) => c.next()));
      for (const [r, d] of done.entries()) {
        if ((d.bad as number) > 0)
          throw new Error(
            `all-reduce ${iter}: rank ${r} has ${d.bad as number} wrong values (first at index ${d.firstBad as number}: ${d.got as number})`,
          );
      }
      if (iter > 0) {
        const s = done.map((d) => d.seconds as number);
        perRank.push(s);
        times.push(Math.max(...s));
      }
    }
    for (const c of ranks) c.send({ type: 'exit' });
    await Promise.all(ranks.map((c) => c.exited()));
    return { times, perRank };
  } finally {
    for (const c of ranks) if (c.proc.exitCode === null) c.proc.kill();
  }
}

export async function run(argv: string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(usage);
    return;
  }
  const { values } = parseArgs({
    args: argv,
    options: {
      workers: { type: 'string', default: '2,4,8' },
      mb: { type: 'string', default: '100' },
      transport: { type: 'string', default: 'tcp' },
      repeat: { type: 'string', default: '3' },
      'chunk-kb': { type: 'string', default: '1024' },
      'bucket-mb': { type: 'string', default: '25' },
      'cpu-prof': { type: 'string' },
    },
  });
  const sizes = values.workers!.split(',').map(Number);
  const transports = values.transport!.split(',') as ('tcp' | 'grpc')[];
  for (const t of transports) if (t !== 'tcp' && t !== 'grpc') throw new Error(`--transport ${t}: tcp or grpc`);
  for (const n of sizes) if (!Number.isInteger(n) || n < 2) throw new Error(`--workers: integers >= 2, got ${values.workers}`);
  const mb = Number(values.mb);
  const repeat = Math.max(1, Number(values.repeat));
  const floats = Math.floor((mb * 2 ** 20) / 4);
  const bytes = floats * 4;
  const chunkBytes = Math.round(Number(values['chunk-kb']) * 1024);
  const bucketBytes = Math.round(Number(values['bucket-mb']) * 2 ** 20);
  const cpus = availableParallelism();
  const tcpTimes = await tcpCeiling(floats, repeat);
  const tcpGbps = bytes / median(tcpTimes) / 1e9;
  for (const transport of transports) {
    for (const size of sizes) {
      const { times } = await ring({
        size,
        floats,
        transport,
        chunkBytes,
        bucketBytes,
        repeat,
        cpuProf: values['cpu-prof'] ? resolve(values['cpu-prof']) : undefined,
      });
      const seconds = median(times);
      const algbw = bytes / seconds / 1e9;
      const bus = (algbw * 2 * (size - 1)) / size;
      process.stdout.write(
        JSON.stringify({
          case: 'allreduce',
          transport,
          workers: size,
          mb,
          bytes,
          chunk_bytes: chunkBytes,
          bucket_bytes: bucketBytes,
          seconds: +seconds.toFixed(4),
          times: times.map((t) => +t.toFixed(4)),
          algbw_gbps: +algbw.toFixed(4),
          bus_gbps: +bus.toFixed(4),
          tcp_gbps: +tcpGbps.toFixed(4),
          tcp_times: tcpTimes.map((t) => +t.toFixed(4)),
          ratio: +(bus / tcpGbps).toFixed(3),
          cpus,
          loadavg_1m: +loadavg()[0]!.toFixed(2),
          oversubscribed: size > cpus,
          checked: 'every index, exact',
        }) + '\n',
      );
    }
  }
}
