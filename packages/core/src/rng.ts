/**
 * Seeded, deterministic random numbers whose whole state can be saved in a checkpoint and restored,
 * so that a resumed run draws exactly the numbers the uninterrupted run would have drawn.
 *
 * Generator: xoshiro128** (Blackman & Vigna), 4 x 32-bit words of state, seeded through splitmix32.
 * Normal deviates come from Box-Muller; the second deviate of each pair is cached in the state.
 */

const TWO_POW_32 = 0x1_0000_0000;

/** One splitmix32 step on `x`: returns [next x, output]. */
function splitmix32(x: number): [number, number] {
  const next = (x + 0x9e3779b9) | 0;
  let z = next;
  z = Math.imul(z ^ (z >>> 16), 0x21f0aaad);
  z = Math.imul(z ^ (z >>> 15), 0x735a2d97);
  return [next, (z ^ (z >>> 15)) >>> 0];
}

/** Hash any number of 32-bit words into a (never all-zero) xoshiro128 state. */
function seedState(words: number[]): Uint32Array {
  let x = 0;
  for (const w of words) x = splitmix32((x ^ w) | 0)[1] | 0;
  const s = new Uint32Array(4);
  for (let i = 0; i < 4; i++) [x, s[i]] = splitmix32(x);
  if ((s[0] | s[1] | s[2] | s[3]) === 0) s[0] = 1;
  return s;
}

/** Split a safe integer into its low and high 32-bit words (two's complement for negatives). */
function integerWords(value: number, what: string): [number, number] {
  if (!Number.isSafeInteger(value)) throw new Error(`Rng: ${what} must be a safe integer, got ${value}`);
  return [value >>> 0, Math.floor(value / TWO_POW_32) >>> 0];
}

export class Rng {
  private readonly s: Uint32Array;
  /** Cached second Box-Muller deviate, or null. */
  private spare: number | null = null;

  /** `seed`: any safe integer; equal seeds give equal sequences. */
  constructor(seed: number) {
    this.s = seedState(integerWords(seed, 'seed'));
  }

  /** A generator that continues from a state returned by `getState()`. */
  static fromState(state: readonly number[]): Rng {
    const rng = new Rng(0);
    rng.setState(state);
    return rng;
  }

  /** Uniform integer in [0, 2^32). */
  uint32(): number {
    const s = this.s;
    const result = Math.imul(rotl(Math.imul(s[1], 5), 7), 9) >>> 0;
    const t = s[1] << 9;
    s[2] ^= s[0];
    s[3] ^= s[1];
    s[1] ^= s[2];
    s[0] ^= s[3];
    s[2] ^= t;
    s[3] = rotl(s[3], 11);
    return result;
  }

  /** Uniform float in [0, 1) with 53 random bits. */
  float(): number {
    const hi = this.uint32() >>> 5; // 27 bits
    const lo = this.uint32() >>> 6; // 26 bits
    return (hi * 67108864 + lo) / 9007199254740992;
  }

  /** Normal deviate with the given mean and standard deviation (Box-Muller, pairs cached). */
  normal(mean = 0, std = 1): number {
    if (this.spare !== null) {
      const z = this.spare;
      this.spare = null;
      return mean + std * z;
    }
    const u = 1 - this.float(); // (0, 1]: log stays finite
    const v = this.float();
    const r = Math.sqrt(-2 * Math.log(u));
    this.spare = r * Math.sin(2 * Math.PI * v);
    return mean + std * r * Math.cos(2 * Math.PI * v);
  }

  /** Uniform integer in [0, n), without modulo bias. `n`: integer in [1, 2^32]. */
  int(n: number): number {
    if (!Number.isInteger(n) || n < 1 || n > TWO_POW_32) {
      throw new Error(`Rng.int: n must be an integer in [1, 2^32], got ${n}`);
    }
    const limit = TWO_POW_32 - (TWO_POW_32 % n); // largest multiple of n that fits
    for (;;) {
      const x = this.uint32();
      if (x < limit) return x % n;
    }
  }

  /** Shuffle `a` in place (Fisher-Yates) and return it. */
  shuffle<T>(a: T[]): T[] {
    for (let i = a.length - 1; i > 0; i--) {
      const j = this.int(i + 1);
      const tmp = a[i];
      a[i] = a[j];
      a[j] = tmp;
    }
    return a;
  }

  /**
   * The full state as plain numbers (JSON-serialisable): the 4 generator words, then 1 and the cached
   * normal deviate, or 0 and 0.
   */
  getState(): number[] {
    return [...this.s, this.spare === null ? 0 : 1, this.spare ?? 0];
  }

  /** Restore a state from `getState()`; the next draws continue exactly from there. */
  setState(state: readonly number[]): void {
    if (!Array.isArray(state) || state.length !== 6) {
      throw new Error(`Rng.setState: expected an array of 6 numbers from getState(), got ${JSON.stringify(state)}`);
    }
    for (let i = 0; i < 4; i++) {
      const w = state[i];
      if (!Number.isInteger(w) || w < 0 || w >= TWO_POW_32) {
        throw new Error(`Rng.setState: word ${i} must be an integer in [0, 2^32), got ${w}`);
      }
    }
    if ((state[0] | state[1] | state[2] | state[3]) === 0) throw new Error('Rng.setState: the state words are all zero');
    if (state[4] !== 0 && state[4] !== 1) throw new Error(`Rng.setState: flag must be 0 or 1, got ${state[4]}`);
    if (!Number.isFinite(state[5])) throw new Error(`Rng.setState: cached normal must be finite, got ${state[5]}`);
    this.s.set(state.slice(0, 4));
    this.spare = state[4] === 1 ? state[5] : null;
  }

  /**
   * An independent generator for stream `stream` (e.g. a worker rank or a data-loader index), derived
   * from this generator's current state and the stream number. Does not advance this generator: the
   * same state and stream always give the same child.
   */
  fork(stream: number): Rng {
    const child = new Rng(0);
    child.s.set(seedState([...this.s, ...integerWords(stream, 'stream')]));
    return child;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}
