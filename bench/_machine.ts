/**
 * What a benchmark line says about where it ran: the CPU model, its vector extensions (AVX2, AVX-512 and
 * its BF16 / FP16 parts, AMX), cores, the load average, and this process's peak resident memory.
 * Shared by the train-step and tiny-runs benches (a `_` file: not a bench case).
 */
import { readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';

export interface MachineInfo {
  cpu: string;
  cores: number;
  avx2: boolean;
  /** Every avx512* flag of /proc/cpuinfo (empty: no AVX-512). */
  avx512: string[];
  /** The CPU multiplies bfloat16 in hardware (AVX-512 BF16 or AMX-BF16). */
  bf16: boolean;
  amx: string[];
}

function cpuFlags(): Set<string> {
  try {
    const line = readFileSync('/proc/cpuinfo', 'utf8')
      .split('\n')
      .find((l) => l.startsWith('flags'));
    return new Set((line?.split(':')[1] ?? '').trim().split(/\s+/));
  } catch {
    return new Set();
  }
}

export function machineInfo(): MachineInfo {
  const flags = cpuFlags();
  const avx512 = [...flags].filter((f) => f.startsWith('avx512')).sort();
  const amx = [...flags].filter((f) => f.startsWith('amx')).sort();
  return {
    cpu: cpus()[0]?.model.trim() ?? 'unknown',
    cores: cpus().length,
    avx2: flags.has('avx2'),
    avx512,
    bf16: flags.has('avx512_bf16') || flags.has('amx_bf16'),
    amx,
  };
}

/** Peak resident set of this process so far, MB (VmHWM; `process.resourceUsage().maxRSS` elsewhere). */
export function peakRssMb(): number {
  try {
    const m = /VmHWM:\s+(\d+) kB/.exec(readFileSync('/proc/self/status', 'utf8'));
    if (m) return Math.round(Number(m[1]) / 1024);
  } catch {
    // not Linux
  }
  return Math.round(process.resourceUsage().maxRSS / 1024);
}

/** The 1-minute load average, 2 decimals. */
export function load1(): number {
  return Number(loadavg()[0]!.toFixed(2));
}

export const mean = (v: number[]): number => v.reduce((a, b) => a + b, 0) / v.length;
export const median = (v: number[]): number => {
  const s = [...v].sort((a, b) => a - b);
  return s.length % 2 ? s[s.length >> 1]! : (s[s.length / 2 - 1]! + s[s.length / 2]!) / 2;
};
export const round = (x: number, digits = 3): number => Number(x.toFixed(digits));
