/**
 * `npm run bench -- matmul-variants [--threads 1] [--rounds 5] [--rows 6432] [--in 384] [--out 1536] [--torch on|off] [--only TEXT]`
 *
 * Where the ONNX Runtime engine's 1-thread gap to PyTorch lies (issue 16): the training step's largest
 * products (ViT-S/16 reg4 224 batch 32: 32 x 201 = 6432 token rows, the MLP's [384 -> 1536]) as one-op
 * ONNX Runtime sessions in several forms, beside PyTorch's torch.mm of the same shapes in the same run:
 *   forward  X [rows, in] @ W [in, out]     MatMul with W an input (the engine), W an initializer (ONNX
 *            Runtime prepacks constant B), X 3-D [32, rows/32, in], Gemm (transB, W stored [out, in]),
 *            FusedMatMul transB
 *   dW       X^T @ G [rows, out]            FusedMatMul transA (the engine), Transpose + MatMul, Gemm transA
 *   dX       G @ W^T                         FusedMatMul transB (the engine), Gemm transB, MatMul on W^T
 *   session  graph optimisation off, intra-op spinning off, CPU arena on (the engine: arena off, spinning
 *            on, all optimisations)
 *   kernel   4 products in one run, each reduced to a scalar (no output to allocate and copy back)
 * `--only TEXT`: the cases whose name contains TEXT.
 * CPU-seconds per product (process.cpuUsage around session.run: every thread of the process) and GFLOP per
 * CPU-second; ONNX Runtime's rounds run before and after PyTorch's (drift on a shared machine shows as a
 * difference of the two). One JSON line per case.
 */
import { spawnSync } from 'node:child_process';
import { loadavg } from 'node:os';
import { parseArgs } from 'node:util';
import type { InferenceSession } from 'onnxruntime-node';
import { GraphBuilder, loadOnnxRuntime, type AttrValue } from '@vitreg/registers';
import { encodeModel } from '../packages/registers/src/onnx-proto.js';
import { torchEnv } from './_torch.js';

type Ort = Awaited<ReturnType<typeof loadOnnxRuntime>>;

interface Case {
  name: string;
  /** The product it computes (forward, dW, dX). */
  product: string;
  bytes: Uint8Array;
  feeds: Record<string, { data: Float32Array; dims: number[] }>;
  options?: InferenceSession.SessionOptions;
  /** Products per run (the times are divided by it). */
  products?: number;
}

function random(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = seed >>> 0 || 1;
  for (let i = 0; i < n; i++) {
    s ^= s << 13;
    s ^= s >>> 17;
    s ^= s << 5;
    a[i] = ((s >>> 0) / 2 ** 32 - 0.5) * 0.1;
  }
  return a;
}

/** A one-op (or two-op) model: inputs by name and dims, initializers, nodes built by `body`, one output. */
function model(
  inputs: [string, number[]][],
  out: [string, number[]],
  body: (g: GraphBuilder) => void,
  inits: [string, Float32Array, number[]][] = [],
): Uint8Array {
  const g = new GraphBuilder();
  for (const [n] of inputs) g.reserve(n);
  for (const [n, d, dims] of inits) g.weight(n, d, dims);
  body(g);
  const proto = g.model(
    inputs.map(([name, dims]) => ({ name, dims })),
    [{ name: out[0], dims: out[1] }],
    {},
  );
  return encodeModel(proto);
}

function cases(rows: number, inDim: number, outDim: number): Case[] {
  const X = random(rows * inDim, 1);
  const W = random(inDim * outDim, 2);
  const Wt = random(outDim * inDim, 3); // W stored [out, in] (values differ: timing only)
  const G = random(rows * outDim, 4);
  const b = rows / 32;
  const fwd = (name: string, op: string, wShape: number[], attrs: Record<string, AttrValue> = {}, domain?: string): Case => ({
    name,
    product: 'forward',
    bytes: model(
      [
        ['x', [rows, inDim]],
        ['w', wShape],
      ],
      ['y', [rows, outDim]],
      (g) => g.node(op, ['x', 'w'], '=y', attrs, domain),
    ),
    feeds: { x: { data: X, dims: [rows, inDim] }, w: { data: wShape[0] === inDim ? W : Wt, dims: wShape } },
  });
  const list: Case[] = [
    fwd('MatMul, W input (engine)', 'MatMul', [inDim, outDim]),
    {
      name: 'MatMul, W initializer (prepacked)',
      product: 'forward',
      bytes: model([['x', [rows, inDim]]], ['y', [rows, outDim]], (g) => g.node('MatMul', ['x', 'w'], '=y'), [['w', W, [inDim, outDim]]]),
      feeds: { x: { data: X, dims: [rows, inDim] } },
    },
    {
      name: 'MatMul, X 3-D [32, n, in]',
      product: 'forward',
      bytes: model(
        [
          ['x', [32, b, inDim]],
          ['w', [inDim, outDim]],
        ],
        ['y', [32, b, outDim]],
        (g) => g.node('MatMul', ['x', 'w'], '=y'),
      ),
      feeds: { x: { data: X, dims: [32, b, inDim] }, w: { data: W, dims: [inDim, outDim] } },
    },
    fwd('Gemm transB, W [out, in]', 'Gemm', [outDim, inDim], { transB: 1 }),
    fwd('FusedMatMul transB, W [out, in]', 'FusedMatMul', [outDim, inDim], { transB: 1 }, 'com.microsoft'),
  ];
  const dw = (name: string, body: (g: GraphBuilder) => void): Case => ({
    name,
    product: 'dW',
    bytes: model(
      [
        ['x', [rows, inDim]],
        ['g', [rows, outDim]],
      ],
      ['y', [inDim, outDim]],
      body,
    ),
    feeds: { x: { data: X, dims: [rows, inDim] }, g: { data: G, dims: [rows, outDim] } },
  });
  list.push(
    dw('FusedMatMul transA (engine)', (g) => g.node('FusedMatMul', ['x', 'g'], '=y', { transA: 1 }, 'com.microsoft')),
    dw('Transpose + MatMul', (g) => g.node('MatMul', [g.op('Transpose', ['x'], 'xt', { perm: [1, 0] }), 'g'], '=y')),
    dw('Gemm transA', (g) => g.node('Gemm', ['x', 'g'], '=y', { transA: 1 })),
  );
  const dx = (name: string, op: string, wShape: number[], attrs: Record<string, AttrValue>, domain?: string): Case => ({
    name,
    product: 'dX',
    bytes: model(
      [
        ['g', [rows, outDim]],
        ['w', wShape],
      ],
      ['y', [rows, inDim]],
      (g) => g.node(op, ['g', 'w'], '=y', attrs, domain),
    ),
    feeds: { g: { data: G, dims: [rows, outDim] }, w: { data: wShape[0] === inDim ? W : Wt, dims: wShape } },
  });
  list.push(
    dx('FusedMatMul transB (engine)', 'FusedMatMul', [inDim, outDim], { transB: 1 }, 'com.microsoft'),
    dx('Gemm transB', 'Gemm', [inDim, outDim], { transB: 1 }),
    dx('MatMul on W^T [out, in]', 'MatMul', [outDim, inDim], {}),
  );
  const engine = list[0]!;
  // The kernel alone: 4 products in one run, each reduced to a scalar (no large output to allocate, copy
  // and return), intermediates from the arena.
  list.push({
    name: 'MatMul x 4 -> ReduceSum, arena on (kernel alone, per product)',
    product: 'forward',
    bytes: model([['x', [rows, inDim]], ...[0, 1, 2, 3].map((i): [string, number[]] => [`w${i}`, [inDim, outDim]])], ['y', []], (g) => {
      // Four weight inputs (the same values): four products, which ONNX Runtime cannot merge into one.
      const sums = [0, 1, 2, 3].map((i) => g.op('ReduceSum', [g.op('MatMul', ['x', `w${i}`], `p${i}`)], `s${i}`, { keepdims: 0 }));
      g.node('Sum', sums, '=y');
    }),
    feeds: { x: engine.feeds.x!, ...Object.fromEntries([0, 1, 2, 3].map((i) => [`w${i}`, engine.feeds.w!])) },
    options: { enableCpuMemArena: true },
    products: 4,
  });
  list.push(
    { ...engine, name: 'MatMul (engine), graph optimisation disabled', options: { graphOptimizationLevel: 'disabled' } },
    { ...engine, name: 'MatMul (engine), intra-op spinning off', options: { extra: { session: { intra_op: { allow_spinning: '0' } } } } },
    { ...engine, name: 'MatMul (engine), CPU arena on', options: { enableCpuMemArena: true, enableMemPattern: true } },
  );
  return list;
}

const TORCH = String.raw`
import json, os, sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
rows, i, o, rounds = map(int, sys.argv[2:6])
x = torch.randn(rows, i) * 0.03; w = torch.randn(i, o) * 0.03; g = torch.randn(rows, o) * 0.03
cases = [('forward', 'torch.mm(X, W)', lambda: torch.mm(x, w)),
         ('dW', 'torch.mm(X.t(), G)', lambda: torch.mm(x.t(), g)),
         ('dX', 'torch.mm(G, W.t())', lambda: torch.mm(g, w.t())),
         ('forward', 'F.linear(X, W^T [out, in])', lambda: torch.nn.functional.linear(x, w.t().contiguous()))]
for _, _, f in cases: f(); f()
times = {c[1]: [] for c in cases}
for r in range(rounds):
    for _, name, f in cases:
        t = time.process_time(); f(); times[name].append(time.process_time() - t)
for product, name, _ in cases:
    ts = sorted(times[name]); print(json.dumps({'product': product, 'name': name, 'cpu_s': ts[len(ts) // 2]}))
`;

function torchTimes(
  threads: number,
  rows: number,
  inDim: number,
  outDim: number,
  rounds: number,
): { product: string; name: string; cpu_s: number }[] {
  const env = torchEnv(threads);
  const r = spawnSync('/usr/bin/python3', ['-c', TORCH, String(threads), String(rows), String(inDim), String(outDim), String(rounds)], {
    env,
    encoding: 'utf8',
  });
  if (r.status !== 0) throw new Error(`PyTorch reference failed: ${r.stderr}`);
  return r.stdout
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l) as { product: string; name: string; cpu_s: number });
}

async function ortTimes(ort: Ort, list: Case[], threads: number, rounds: number): Promise<Map<string, number[]>> {
  const sessions: { c: Case; s: InferenceSession; feeds: Record<string, InstanceType<Ort['Tensor']>> }[] = [];
  for (const c of list) {
    const s = await ort.InferenceSession.create(c.bytes, {
      graphOptimizationLevel: 'all',
      executionMode: 'sequential',
      enableCpuMemArena: false,
      enableMemPattern: false,
      interOpNumThreads: 1,
      intraOpNumThreads: threads,
      logSeverityLevel: 3,
      ...c.options,
    });
    const feeds = Object.fromEntries(Object.entries(c.feeds).map(([k, v]) => [k, new ort.Tensor('float32', v.data, v.dims)]));
    await s.run(feeds);
    await s.run(feeds);
    sessions.push({ c, s, feeds });
  }
  const out = new Map<string, number[]>();
  for (let r = 0; r < rounds; r++) {
    for (const { c, s, feeds } of sessions) {
      const t = process.cpuUsage();
      await s.run(feeds);
      const d = process.cpuUsage(t);
      out.set(c.name, [...(out.get(c.name) ?? []), (d.user + d.system) / 1e6 / (c.products ?? 1)]);
    }
  }
  for (const { s } of sessions) await s.release();
  return out;
}

const median = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;

export async function run(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      threads: { type: 'string', default: '1' },
      rounds: { type: 'string', default: '5' },
      rows: { type: 'string', default: '6432' },
      in: { type: 'string', default: '384' },
      out: { type: 'string', default: '1536' },
      torch: { type: 'string', default: 'on' },
      only: { type: 'string' },
    },
  });
  const threads = Number(values.threads);
  const rounds = Number(values.rounds);
  const [rows, inDim, outDim] = [Number(values.rows), Number(values.in), Number(values.out)];
  const ort = await loadOnnxRuntime();
  const list = cases(rows, inDim, outDim);
  const flop = 2 * rows * inDim * outDim;
  const only = values.only;
  const chosen = only ? list.filter((c) => c.name.toLowerCase().includes(only.toLowerCase())) : list;
  if (chosen.length === 0) throw new Error(`--only: no case name contains "${only}"`);
  const before = await ortTimes(ort, chosen, threads, rounds);
  const torch = values.torch === 'on' ? torchTimes(threads, rows, inDim, outDim, rounds) : [];
  const after = await ortTimes(ort, chosen, threads, rounds);
  const torchOf = (product: string) => torch.find((t) => t.product === product)?.cpu_s;
  const load = loadavg()[0]!.toFixed(1);
  for (const t of torch) {
    const line = { case: 'matmul-variants', engine: 'pytorch', threads, product: t.product, name: t.name, cpu_s: +t.cpu_s.toFixed(4) };
    process.stdout.write(JSON.stringify({ ...line, gflop_per_cpu_s: +(flop / 1e9 / t.cpu_s).toFixed(1), load }) + '\n');
  }
  for (const c of chosen) {
    const a = median(before.get(c.name)!);
    const b = median(after.get(c.name)!);
    const cpu = (a + b) / 2;
    const ref = torchOf(c.product);
    const line = {
      case: 'matmul-variants',
      engine: 'onnxruntime',
      threads,
      product: c.product,
      name: c.name,
      cpu_s: +cpu.toFixed(4),
      cpu_s_before_after: [+a.toFixed(4), +b.toFixed(4)],
      gflop_per_cpu_s: +(flop / 1e9 / cpu).toFixed(1),
      vs_torch: ref ? +(ref / cpu).toFixed(2) : null,
      load,
    };
    process.stdout.write(JSON.stringify(line) + '\n');
  }
}
