/**
 * The incremental header parser (safetensors-json.ts, issue 21) against JSON.parse as the reference:
 * seeded random JSON texts (unicode raw and escaped, surrogate pairs and lone surrogates, every escape,
 * numbers in every form, duplicate and `__proto__` keys, whitespace everywhere, long strings) fed in
 * chunks of 1, 2, 3, 7 and 65536 bytes give the same value, keys in the same order; mutated texts are
 * refused exactly when TextDecoder + JSON.parse (the reader's old path) refuses them. Then the string
 * limits, each with its own error, and the reader using the parser across its 1 MiB chunks, 8 MiB
 * behind its count.
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { Rng } from '../src/rng.js';
import { SAFETENSORS_LIMITS } from '../src/safetensors-header.js';
import { HeaderJsonError, HeaderJsonParser, type HeaderJsonLimits } from '../src/safetensors-json.js';
import { readSafetensors } from '../src/safetensors.js';
import { manyTensorsSafetensors, rawHeaderSafetensors } from './hostile-corpus.js';

const dir = await mkdtemp(join(tmpdir(), 'vitreg-st-json-'));
after(() => rm(dir, { recursive: true, force: true }));

const WIDE: HeaderJsonLimits = { maxNameBytes: 1e9, maxStringBytes: 1e9 };
const CHUNKS = [1, 2, 3, 7, 65536];

/** Parses `bytes` fed in chunks of `size`. */
function parse(bytes: Uint8Array, size: number, limits = WIDE): unknown {
  const p = new HeaderJsonParser(limits);
  for (let i = 0; i < bytes.length; i += size) p.push(bytes.subarray(i, i + size));
  return p.end();
}

/** What the reader did before: strict UTF-8 (a leading BOM dropped), then JSON.parse; undefined if refused. */
function reference(bytes: Uint8Array): { value: unknown } | undefined {
  try {
    return { value: JSON.parse(new TextDecoder('utf-8', { fatal: true }).decode(bytes)) as unknown };
  } catch {
    return undefined;
  }
}

/** Asserts `got` is `want` exactly: Object.is for scalars, own keys in order, descriptors, prototypes. */
function same(got: unknown, want: unknown, at = '$'): void {
  if (typeof want !== 'object' || want === null) {
    assert.ok(Object.is(got, want), `${at}: ${String(got)} !== ${String(want)}`);
    return;
  }
  assert.ok(typeof got === 'object' && got !== null, `${at}: not an object`);
  assert.equal(Object.getPrototypeOf(got), Object.getPrototypeOf(want), `${at}: prototype`);
  assert.deepEqual(Reflect.ownKeys(got), Reflect.ownKeys(want), `${at}: keys`);
  for (const k of Reflect.ownKeys(want)) {
    const g: PropertyDescriptor = Object.getOwnPropertyDescriptor(got, k)!;
    const w: PropertyDescriptor = Object.getOwnPropertyDescriptor(want, k)!;
    assert.deepEqual([g.enumerable, g.writable, g.configurable], [w.enumerable, w.writable, w.configurable], `${at}.${String(k)}`);
    if (!(Array.isArray(want) && k === 'length')) same(g.value, w.value, `${at}.${String(k)}`);
  }
}

/** Seeded random JSON texts in every form the grammar allows. */
class Gen {
  constructor(private readonly rng: Rng) {}
  private pick<T>(a: readonly T[]): T {
    return a[this.rng.int(a.length)]!;
  }
  private chance(p: number): boolean {
    return this.rng.float() < p;
  }
  ws(): string {
    return this.chance(0.6) ? '' : Array.from({ length: 1 + this.rng.int(3) }, () => this.pick([' ', '\t', '\n', '\r'])).join('');
  }
  private hex(u: number): string {
    const h = u.toString(16).padStart(4, '0');
    return `\\u${this.chance(0.5) ? h : h.toUpperCase()}`;
  }
  /** One character (a code point, or a lone surrogate) written raw or escaped. */
  private char(): string {
    const c = this.pick([
      ...'aZ09 /_-.:{}[],',
      '"',
      '\\',
      '\n',
      '\t',
      '\b',
      '\f',
      '\r',
      '\u0000',
      '\u001f',
      '\u007f',
      'é',
      'ÿ',
      'Ā',
      '€',
      '中',
      '\u2028',
      '\uffff',
      '😀',
      '𝄞',
      '\ud800',
      '\udfff',
    ]);
    const u = c.charCodeAt(0);
    const lone = c.length === 1 && u >= 0xd800 && u <= 0xdfff;
    const short: Record<string, string> = { '"': '\\"', '\\': '\\\\', '\n': '\\n', '\t': '\\t', '\b': '\\b', '\f': '\\f', '\r': '\\r' };
    if (lone || u < 0x20 || c === '"' || c === '\\' || this.chance(0.15)) {
      if (short[c] && this.chance(0.6)) return short[c];
      if (c === '/' && this.chance(0.5)) return '\\/';
      return [...c].length === 1 && c.length === 2 ? this.hex(u) + this.hex(c.charCodeAt(1)) : this.hex(u); // a pair escaped as two
    }
    return c;
  }
  string(long = false): string {
    const n = long ? 300 + this.rng.int(20_000) : this.rng.int(12);
    let s = '"';
    for (let i = 0; i < n; i++) s += long && this.chance(0.9) ? this.pick(['a', 'b', 'é', '中', '😀']) : this.char();
    return s + '"';
  }
  number(): string {
    const digits = (n: number) => Array.from({ length: n }, () => this.rng.int(10)).join('');
    const int = this.chance(0.3) ? '0' : `${1 + this.rng.int(9)}${digits(this.rng.int(25))}`;
    const frac = this.chance(0.4) ? `.${digits(1 + this.rng.int(20))}` : '';
    const exp = this.chance(0.3) ? `${this.pick(['e', 'E'])}${this.pick(['', '+', '-'])}${digits(1 + this.rng.int(3))}` : '';
    return `${this.chance(0.3) ? '-' : ''}${int}${frac}${exp}`;
  }
  key(keys: string[]): string {
    if (keys.length && this.chance(0.1)) return this.pick(keys); // a duplicate
    return this.chance(0.3)
      ? JSON.stringify(this.pick(['__proto__', '__metadata__', '0', '1', '42', '4294967295', '-1', 'constructor', 'toString', 'dtype']))
      : this.string();
  }
  value(depth: number): string {
    const w = () => this.ws();
    const kind = depth <= 0 ? this.rng.int(3) : this.rng.int(5);
    if (kind === 0) return this.chance(0.02) ? this.string(true) : this.string();
    if (kind === 1) return this.chance(0.8) ? this.number() : this.pick(['true', 'false', 'null']);
    if (kind === 2)
      return this.pick(['-0', '0', '1e400', '-1e400', '1e-400', '123456789012345678901234567890', '0.1', '5e-324', '9007199254740993']);
    const n = this.rng.int(5);
    if (kind === 3) return `[${w()}${Array.from({ length: n }, () => this.value(depth - 1)).join(`${w()},${w()}`)}${w()}]`;
    const keys: string[] = [];
    const members = Array.from({ length: n }, () => {
      const k = this.key(keys);
      keys.push(k);
      return `${k}${w()}:${w()}${this.value(depth - 1)}`;
    });
    return `{${w()}${members.join(`${w()},${w()}`)}${w()}}`;
  }
  text(): Buffer {
    const bom = this.chance(0.05) ? '\ufeff' : '';
    return Buffer.from(`${bom}${this.ws()}${this.value(1 + this.rng.int(5))}${this.ws()}`);
  }
}

test('random valid JSON texts, fed in chunks of 1, 2, 3, 7 and 65536 bytes, parse to exactly what JSON.parse gives', () => {
  const gen = new Gen(new Rng(21));
  let bytes = 0;
  for (let t = 0; t < 400; t++) {
    const text = gen.text();
    const want = reference(text);
    assert.ok(want, `generated text ${t} is not valid JSON: ${text.toString().slice(0, 200)}`);
    bytes += text.length;
    for (const size of CHUNKS) same(parse(text, size), want.value, `text ${t} in chunks of ${size}`);
  }
  assert.ok(bytes > 150_000, `only ${bytes} bytes generated`);
});

test('mutated texts are refused exactly when the old reader refused them, with a HeaderJsonError', () => {
  const gen = new Gen(new Rng(0x21));
  const rng = new Rng(7);
  const SIGNIFICANT = [
    ...Buffer.from('"\\{}[],:-+.eE01tnfu \t/'),
    0x00,
    0x1f,
    0x7f,
    0x80,
    0xbf,
    0xc3,
    0xe2,
    0xed,
    0xef,
    0xbb,
    0xf0,
    0xf4,
    0xf8,
    0xff,
  ];
  let refused = 0;
  let accepted = 0;
  for (let t = 0; t < 1500; t++) {
    const base = gen.text();
    if (base.length > 4000) continue;
    const at = rng.int(base.length + 1);
    const byte = Buffer.from([SIGNIFICANT[rng.int(SIGNIFICANT.length)]!]);
    const variants = [
      Buffer.concat([base.subarray(0, at), base.subarray(at + 1)]), // a byte deleted
      Buffer.concat([base.subarray(0, at), byte, base.subarray(at)]), // one inserted
      Buffer.concat([base.subarray(0, at), byte, base.subarray(at + 1)]), // one replaced
      base.subarray(0, at), // cut short
    ];
    const text = variants[rng.int(variants.length)]!;
    const want = reference(text);
    const size = CHUNKS[rng.int(CHUNKS.length)]!;
    let got: unknown;
    let err: unknown;
    try {
      got = parse(text, size);
    } catch (e) {
      err = e;
    }
    const shown = JSON.stringify(text.toString('latin1').slice(0, 300));
    if (!want) {
      refused++;
      assert.ok(err instanceof HeaderJsonError, `accepted or escaped (${String(err)}), JSON.parse refuses: ${shown}`);
      assert.match(err.message, /^is not valid (UTF-8|JSON: .* at byte \d+|JSON: Unexpected end of JSON input)$/);
    } else {
      accepted++;
      assert.equal(err, undefined, `refused (${String(err)}), JSON.parse accepts: ${shown}`);
      same(got, want.value, `mutant ${t}`);
    }
  }
  assert.ok(refused > 500 && accepted > 100, `${refused} refused, ${accepted} accepted`);
});

test('hand-picked edge cases agree with JSON.parse in every chunking', () => {
  const cases = [
    '{}',
    '[]',
    '""',
    '0',
    '-0',
    ' \t\r\n{ "a" : [ 1 , -2.5e+3 , true , false , null ] } \n',
    '"\\ud83d\\ude00 \\uD83D\\uDE00 😀 \\ud800 \\udc00x"',
    '{"__proto__": {"x": 1}, "a": 1, "a": 2, "2": 0, "1": 0}',
    '\ufeff{"bom": 1}',
    '\ufeff\ufeff{}',
    '{"a":1,}',
    '[1,]',
    '01',
    '1.',
    '.5',
    '+1',
    '1e',
    '-',
    'tru',
    'nul',
    'truex',
    '"\u0001"',
    '"\\x41"',
    '"\\u12G4"',
    '{"a" 1}',
    '{"a":1 "b":2}',
    '[1 2]',
    '{1:2}',
    "{'a':1}",
    '{} {}',
    '',
    ' ',
    '\ufeff',
  ];
  for (const c of cases) {
    const text = Buffer.from(c);
    const want = reference(text);
    for (const size of CHUNKS) {
      if (want) same(parse(text, size), want.value, `${JSON.stringify(c)} in chunks of ${size}`);
      else assert.throws(() => parse(text, size), HeaderJsonError, `${JSON.stringify(c)} in chunks of ${size}`);
    }
  }
  // invalid UTF-8 anywhere, also a sequence cut by a chunk's end or left incomplete at the end
  for (const bytes of [
    [0x7b, 0xff, 0x7d],
    [0x22, 0xe2, 0x82, 0x22],
    [0x22, 0xed, 0xa0, 0x80, 0x22],
    [0x22, 0xc0, 0x80, 0x22],
    [0x22, 0x22, 0xe2],
  ]) {
    for (const size of CHUNKS) assert.throws(() => parse(Buffer.from(bytes), size), /^HeaderJsonError: is not valid UTF-8$/);
  }
});

test('string limits: one key or name, one string outside __metadata__ values, all strings, one number; each refused as it passes', () => {
  const lim = { maxNameBytes: 12, maxStringBytes: 60 };
  const at =
    (text: string, size = 65536) =>
    () =>
      parse(Buffer.from(text), size, lim);
  for (const size of [1, 7, 65536]) {
    assert.doesNotThrow(at('{"123456789012":{"dtype":"F32"}}', size));
    assert.throws(
      at('{"1234567890123":{}}', size),
      /^HeaderJsonError: tensor name at byte 1 is longer than 12 bytes \(.*VITREG_SAFETENSORS_MAX_NAME_BYTES raises it\)/,
    );
    // escapes count as written
    assert.throws(at('{"\\u0041\\u0042\\u0043":{}}', size), /tensor name at byte 1 is longer than 12 bytes/);
    assert.throws(at('{"w":{"dtype":"F32xxxxxxxxxx"}}', size), /string at byte 14 is longer than 12 bytes/);
    assert.throws(at('{"w":{"data_offsets_":[]}}', size), /key at byte 6 is longer than 12 bytes/);
    // __metadata__'s values are bounded by the total only; its keys are names
    assert.deepEqual(parse(Buffer.from('{"__metadata__":{"k":"a long metadata value"}}'), size, lim), {
      __metadata__: { k: 'a long metadata value' },
    });
    assert.throws(at('{"__metadata__":{"long key!!!!!":"v"}}', size), /key at byte 17 is longer than 12 bytes/);
    assert.throws(
      at(`{"__metadata__":{"k":"${'x'.repeat(30)}","l":"${'y'.repeat(20)}"}}`, size),
      /^HeaderJsonError: strings take more than 60 bytes \(the string at byte 58, in __metadata__, passes it; .*VITREG_SAFETENSORS_MAX_STRING_BYTES raises the limit\)/,
    );
    const five = `{${[...'abcde'].map((k) => `"${k}":"${'x'.repeat(12)}"`).join(',')}}`;
    assert.throws(at(five, size), /strings take more than 60 bytes \(the string at byte 81, outside __metadata__/);
    assert.throws(at('{"a":1234567890123}', size), /number at byte 5 is longer than 12 bytes/);
    assert.doesNotThrow(at('{"a":-12345678901}', size));
  }
  // a tensor's entry parsed at once (whole in its chunk, at most maxNameBytes) counts toward the total,
  // and a longer one goes through the state machine, which holds each string to the limit
  const lim64 = { maxNameBytes: 64, maxStringBytes: 100 };
  const entries = `{"a":{"k":"${'x'.repeat(50)}"},"b":{"k":"${'y'.repeat(50)}"}}`;
  for (const size of [7, 65536]) {
    assert.throws(
      () => parse(Buffer.from(entries), size, lim64),
      /strings take more than 100 bytes \(the string at byte 73, outside __metadata__/,
    );
    assert.throws(
      () => parse(Buffer.from(`{"w":{"dtype":"${'x'.repeat(70)}"}}`), size, lim64),
      /string at byte 14 is longer than 64 bytes/,
    );
  }
  assert.deepEqual(parse(Buffer.from(entries), 65536, { maxNameBytes: 64, maxStringBytes: 104 }), {
    a: { k: 'x'.repeat(50) },
    b: { k: 'y'.repeat(50) },
  });
  // refused in the chunk that passes the limit, before the rest arrives
  const p = new HeaderJsonParser({ maxNameBytes: 12, maxStringBytes: 1000 });
  p.push(Buffer.from('{"__metadata__":{"x":"'));
  p.push(Buffer.alloc(600, 'a'));
  assert.throws(() => p.push(Buffer.alloc(600, 'a')), /strings take more than 1000 bytes \(the string at byte 21, in __metadata__/);
});

test('the reader parses across its 1 MiB chunks and applies the limits, raised by the environment', async () => {
  // a 2.5 MB header: escapes, surrogate pairs and multi-byte characters cut by the chunk boundaries
  const piece = 'plain é中😀 \\" \\\\ \\n \\ud83d\\ude00 \\u00e9 ';
  const value = piece.repeat(Math.ceil(2_500_000 / piece.length));
  const json = Buffer.from(`{"__metadata__":{"notes":"${value}","format":"pt"},"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`);
  const p = join(dir, 'big.safetensors');
  const length = Buffer.alloc(8);
  length.writeBigUInt64LE(BigInt(json.length));
  await writeFile(p, Buffer.concat([length, json, new Uint8Array(4)])); // not padded: the last chunk ends with '}'
  const { tensors, metadata } = await readSafetensors(p);
  assert.deepEqual(Object.keys(tensors), ['w']);
  assert.equal(metadata.notes, (JSON.parse(json.toString()) as { __metadata__: { notes: string } }).__metadata__.notes);
  assert.equal(metadata.format, 'pt');
  // over the total: refused naming the file and the variable that raises the limit
  const saved = SAFETENSORS_LIMITS.maxStringBytes;
  SAFETENSORS_LIMITS.maxStringBytes = 2 ** 20;
  try {
    await assert.rejects(
      readSafetensors(p),
      /big\.safetensors: header strings take more than 1048576 bytes \(the string at byte 25, in __metadata__/,
    );
    process.env.VITREG_SAFETENSORS_MAX_STRING_BYTES = '4000000';
    assert.equal((await readSafetensors(p)).metadata.format, 'pt');
  } finally {
    SAFETENSORS_LIMITS.maxStringBytes = saved;
    delete process.env.VITREG_SAFETENSORS_MAX_STRING_BYTES;
  }
  // a 100 KB tensor name: refused by default, read with the limit raised
  const long = join(dir, 'long.safetensors');
  await writeFile(
    long,
    rawHeaderSafetensors(Buffer.from(`{"${'n'.repeat(100_000)}":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}`), new Uint8Array(4)),
  );
  await assert.rejects(readSafetensors(long), /long\.safetensors: header tensor name at byte 1 is longer than 8192 bytes/);
  process.env.VITREG_SAFETENSORS_MAX_NAME_BYTES = '100000';
  try {
    assert.equal(Object.keys((await readSafetensors(long)).tensors)[0]!.length, 100_000);
  } finally {
    delete process.env.VITREG_SAFETENSORS_MAX_NAME_BYTES;
  }
});

test('the reader counts a header of up to 8 MiB whole before parsing it: too many tensors is the error even after a syntax error', async () => {
  // 20,000 tensors in 1.4 MB, the first entry malformed, the limit passed in the second 1 MiB chunk:
  // the count is refused before the parse sees the first
  const bytes = manyTensorsSafetensors(20_000);
  const at = bytes.indexOf('"shape":[1]');
  bytes.write('"shape":[x]', at);
  const p = join(dir, 'count-first.safetensors');
  await writeFile(p, bytes);
  await assert.rejects(readSafetensors(p), /count-first\.safetensors: header is not valid JSON: Unexpected 'x' at byte \d+/);
  const saved = SAFETENSORS_LIMITS.maxTensors;
  SAFETENSORS_LIMITS.maxTensors = 19_000;
  try {
    await assert.rejects(readSafetensors(p), /count-first\.safetensors: header declares 20000 tensors, more than the limit of 19000/);
  } finally {
    SAFETENSORS_LIMITS.maxTensors = saved;
  }
});
