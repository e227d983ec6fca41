/**
 * CLIP's byte-level BPE tokenizer, as open_clip's `SimpleTokenizer` (OpenAI CLIP's, with open_clip's
 * default 'lower' cleaning): text -> ftfy-style fix, HTML unescaped twice, whitespace collapsed, lower case ->
 * open_clip's regex (the special tokens, 's 't 're 've 'm 'll 'd, runs of letters, single digits, runs of
 * other non-space characters) -> UTF-8 bytes as printable characters (`bytes_to_unicode`) -> BPE merges by
 * rank -> ids; `tokenize` adds start/end-of-text, truncates to the context (77) with end-of-text last and pads
 * with 0.
 *
 * The vocabulary is the merges file the user gives (`bpe_simple_vocab_16e6.txt.gz`, gzip or plain text: a
 * header line, then one merge "a b" per line; the first 49152 - 256 - 2 lines after the header are read, as
 * open_clip does); nothing is downloaded. Ids: the 256 byte characters, the same with `</w>`, one per merge, then
 * `<start_of_text>` and `<end_of_text>` (49406 and 49407 with the released file).
 *
 * One difference, by necessity: ftfy's `fix_text` (Python) has no JavaScript port. `fixText` does what it does
 * to well-formed text (NFC, curly quotes straightened, Latin ligatures and full-width ASCII expanded, C0/C1
 * control characters other than tab and line breaks removed); ftfy's repair of mojibake (text decoded with
 * the wrong codec) is not done, so such text can tokenize differently.
 */
import { readFile } from 'node:fs/promises';
import { gunzipSync } from 'node:zlib';
import { decodeHTML } from 'entities';

/** open_clip's `bytes_to_unicode`: each byte as a printable character (printable Latin-1 as itself, the rest from U+0100). */
export function bytesToUnicode(): string[] {
  const bs: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const out = new Array<string>(256);
  for (const b of bs) out[b] = String.fromCharCode(b);
  let n = 0;
  for (let b = 0; b < 256; b++) if (!bs.includes(b)) out[b] = String.fromCharCode(256 + n++);
  return out;
}

/** The byte characters in open_clip's vocabulary order (the bytes_to_unicode dict's insertion order). */
function byteVocab(): string[] {
  const enc = bytesToUnicode();
  const order: number[] = [];
  for (let b = 0x21; b <= 0x7e; b++) order.push(b);
  for (let b = 0xa1; b <= 0xac; b++) order.push(b);
  for (let b = 0xae; b <= 0xff; b++) order.push(b);
  for (let b = 0; b < 256; b++) if (!order.includes(b)) order.push(b);
  return order.map((b) => enc[b]!);
}

const LIGATURES: Record<string, string> = {
  Ĳ: 'IJ',
  ĳ: 'ij',
  ŉ: 'ʼn',
  Ǳ: 'DZ',
  ǲ: 'Dz',
  ǳ: 'dz',
  Ǆ: 'DŽ',
  ǅ: 'Dž',
  ǆ: 'dž',
  Ǉ: 'LJ',
  ǈ: 'Lj',
  ǉ: 'lj',
  Ǌ: 'NJ',
  ǋ: 'Nj',
  ǌ: 'nj',
  ﬀ: 'ff',
  ﬁ: 'fi',
  ﬂ: 'fl',
  ﬃ: 'ffi',
  ﬄ: 'ffl',
  ﬅ: 'ſt',
  ﬆ: 'st',
};

/**
 * What ftfy's `fix_text` does to well-formed text: NFC, curly quotes straightened (uncurl_quotes), Latin
 * ligatures expanded (fix_latin_ligatures), full-width ASCII and the ideographic space made ASCII
 * (fix_character_width), C0/C1 control characters other than tab and line breaks removed
 * (remove_control_chars). Mojibake repair (fix_encoding) is not done.
 */
export function fixText(text: string): string {
  let t = text.normalize('NFC');
  t = t.replace(/[\u2018-\u201b]/g, "'").replace(/[\u201c-\u201f]/g, '"');
  t = t.replace(/[\u0132\u0133\u0149\u01f1-\u01f3\u01c4-\u01cc\ufb00-\ufb06]/g, (c) => LIGATURES[c] ?? c);
  t = t.replace(/[\uff01-\uff5e]/g, (c) => String.fromCharCode(c.charCodeAt(0) - 0xfee0)).replace(/\u3000/g, ' ');
  // eslint-disable-next-line no-control-regex
  t = t.replace(/[\u0000-\u0008\u000b\u000e-\u001f\u007f-\u009f]/g, '');
  return t;
}

/** Python's str.isspace characters (what str.split() and str.strip() split and strip on). */
const PY_SPACE = '\\t\\n\\v\\f\\r\\x1c-\\x1f \\x85\\xa0\\u1680\\u2000-\\u200a\\u2028\\u2029\\u202f\\u205f\\u3000';
const SPLIT = new RegExp(`[${PY_SPACE}]+`, 'u');
const STRIP = new RegExp(`^[${PY_SPACE}]+|[${PY_SPACE}]+$`, 'gu');

/** open_clip's `basic_clean` (ftfy stand-in, html.unescape twice, strip) then `whitespace_clean` and lower case. */
export function cleanText(text: string): string {
  const basic = decodeHTML(decodeHTML(fixText(text))).replace(STRIP, '');
  return basic
    .split(SPLIT)
    .filter((w) => w.length > 0)
    .join(' ')
    .toLowerCase();
}

function escapeRegExp(s: string): string {
  return s.replace(/[.*+?^${}()|[\]\\]/g, '\\$&');
}

/**
 * The text of a merges file (bpe_simple_vocab_16e6.txt.gz's format) in which each of `words` (lower-case
 * letters, as the cleaned text has them) is one token: byte-pair merges learnt on the word list (the most
 * frequent pair first, ties in string order) until every word is one symbol, so applying them by rank
 * rebuilds each word. For small closed vocabularies, such as the synthetic shapes' generated captions.
 */
export function wordMerges(words: readonly string[]): string {
  const enc = bytesToUnicode();
  let symbols = [...new Set(words)].map((w) => {
    const chars = Array.from(new TextEncoder().encode(w), (b) => enc[b]!);
    chars[chars.length - 1] += '</w>';
    return chars;
  });
  const lines = ['#version: 0.2 (word merges written by vitreg)'];
  for (;;) {
    const counts = new Map<string, number>();
    for (const w of symbols)
      for (let i = 0; i + 1 < w.length; i++) counts.set(`${w[i]} ${w[i + 1]}`, (counts.get(`${w[i]} ${w[i + 1]}`) ?? 0) + 1);
    if (counts.size === 0) break;
    const best = [...counts].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : 1))[0]![0];
    lines.push(best);
    const [x, y] = best.split(' ') as [string, string];
    symbols = symbols.map((w) => {
      const out: string[] = [];
      for (let i = 0; i < w.length; i++) {
        if (i + 1 < w.length && w[i] === x && w[i + 1] === y) {
          out.push(x + y);
          i++;
        } else out.push(w[i]!);
      }
      return out;
    });
  }
  return lines.join('\n');
}

export interface ClipTokenizerOptions {
  /** Tokens per row of `tokenize` (open_clip: 77). */
  contextLength?: number;
  /** Special tokens after <start_of_text> and <end_of_text> (open_clip's additional_special_tokens). */
  additionalSpecialTokens?: string[];
}

export class ClipTokenizer {
  readonly contextLength: number;
  readonly vocabSize: number;
  readonly sotTokenId: number;
  readonly eotTokenId: number;
  private readonly encoder = new Map<string, number>();
  private readonly decoder = new Map<number, string>();
  private readonly ranks = new Map<string, number>();
  private readonly cache = new Map<string, string>();
  private readonly byteEncoder = bytesToUnicode();
  private readonly pattern: RegExp;

  /** A tokenizer from the text of a merges file (see the module comment). */
  constructor(mergesText: string, opts: ClipTokenizerOptions = {}) {
    const lines = mergesText.split('\n').slice(1, 49152 - 256 - 2 + 1);
    const merges = lines.map((l) => l.split(/\s+/).filter((s) => s.length > 0));
    const bytes = byteVocab();
    const vocab = [...bytes, ...bytes.map((v) => `${v}</w>`), ...merges.map((m) => m.join(''))];
    const special = ['<start_of_text>', '<end_of_text>', ...(opts.additionalSpecialTokens ?? [])];
    vocab.push(...special);
    vocab.forEach((v, i) => this.encoder.set(v, i));
    for (const [k, v] of this.encoder) this.decoder.set(v, k);
    merges.forEach((m, i) => this.ranks.set(m.join(' '), i));
    for (const s of special) this.cache.set(s, s);
    this.pattern = new RegExp(
      `${special.map(escapeRegExp).join('|')}|'s|'t|'re|'ve|'m|'ll|'d|[\\p{L}]+|[\\p{N}]|[^\\p{White_Space}\\p{L}\\p{N}]+`,
      'giu',
    );
    this.vocabSize = this.encoder.size;
    this.sotTokenId = this.encoder.get('<start_of_text>')!;
    this.eotTokenId = this.encoder.get('<end_of_text>')!;
    this.contextLength = opts.contextLength ?? 77;
    if (!Number.isInteger(this.contextLength) || this.contextLength < 2)
      throw new Error(`tokenizer: contextLength must be an integer >= 2, got ${this.contextLength}`);
  }

  /** Reads a merges file, gzip-compressed (`.gz`, or by its magic bytes) or plain text. */
  static async fromFile(path: string, opts: ClipTokenizerOptions = {}): Promise<ClipTokenizer> {
    let bytes: Buffer;
    try {
      bytes = await readFile(path);
    } catch (e) {
      throw new Error(`tokenizer ${path}: cannot read the vocabulary file (${(e as Error).message})`, { cause: e });
    }
    let text: string;
    try {
      text = (bytes[0] === 0x1f && bytes[1] === 0x8b ? gunzipSync(bytes) : bytes).toString('utf8');
    } catch (e) {
      throw new Error(`tokenizer ${path}: not a valid gzip file (${(e as Error).message})`, { cause: e });
    }
    const lines = text.split('\n');
    if (lines.slice(1, 50).some((l) => l.trim() !== '' && l.trim().split(/\s+/).length !== 2)) {
      throw new Error(
        `tokenizer ${path}: not a BPE merges file (expected a header line, then merges "a b" one per line, as bpe_simple_vocab_16e6.txt.gz)`,
      );
    }
    return new ClipTokenizer(text, opts);
  }

  /** open_clip's `SimpleTokenizer.bpe`: the merges of one byte-encoded word, space-separated. */
  private bpe(token: string): string {
    const hit = this.cache.get(token);
    if (hit !== undefined) return hit;
    const chars = Array.from(token);
    let word = [...chars.slice(0, -1), `${chars[chars.length - 1]}</w>`];
    if (word.length < 2) return `${token}</w>`;
    for (;;) {
      let best: string | undefined;
      let bestRank = Infinity;
      for (let i = 0; i < word.length - 1; i++) {
        const r = this.ranks.get(`${word[i]} ${word[i + 1]}`);
        if (r !== undefined && r < bestRank) {
          bestRank = r;
          best = `${word[i]} ${word[i + 1]}`;
        }
      }
      if (best === undefined) break;
      const sp = best.indexOf(' ');
      const first = best.slice(0, sp);
      const second = best.slice(sp + 1);
      const next: string[] = [];
      let i = 0;
      while (i < word.length) {
        const j = word.indexOf(first, i);
        if (j < 0) {
          next.push(...word.slice(i));
          break;
        }
        next.push(...word.slice(i, j));
        i = j;
        if (word[i] === first && i < word.length - 1 && word[i + 1] === second) {
          next.push(first + second);
          i += 2;
        } else {
          next.push(word[i]!);
          i += 1;
        }
      }
      word = next;
      if (word.length === 1) break;
    }
    const out = word.join(' ');
    this.cache.set(token, out);
    return out;
  }

  /** Ids of one text, without start/end-of-text. */
  encode(text: string): number[] {
    const ids: number[] = [];
    const utf8 = new TextEncoder();
    for (const m of cleanText(text).matchAll(this.pattern)) {
      const token = Array.from(utf8.encode(m[0]), (b) => this.byteEncoder[b]!).join('');
      for (const piece of this.bpe(token).split(' ')) {
        const id = this.encoder.get(piece);
        if (id === undefined) throw new Error(`tokenizer: "${piece}" (from "${m[0]}") is not in the vocabulary`);
        ids.push(id);
      }
    }
    return ids;
  }

  /** Text of ids (`</w>` as a space; invalid UTF-8 replaced), as open_clip's `decode`. */
  decode(ids: ArrayLike<number>): string {
    const dec = new Map(this.byteEncoder.map((c, b) => [c, b]));
    const text = Array.from(ids, (id) => this.decoder.get(id) ?? '').join('');
    const bytes = Uint8Array.from(Array.from(text).flatMap((c) => (dec.has(c) ? [dec.get(c)!] : Array.from(new TextEncoder().encode(c)))));
    return new TextDecoder('utf-8', { fatal: false }).decode(bytes).replaceAll('</w>', ' ');
  }

  /**
   * open_clip's `tokenizer(texts)`: rows of `contextLength` ids (start-of-text, the text's ids, end-of-text,
   * zeros), truncated to the context with end-of-text kept last; row-major [texts.length, contextLength].
   */
  tokenize(texts: string[], contextLength = this.contextLength): Int32Array {
    const out = new Int32Array(texts.length * contextLength);
    texts.forEach((t, r) => {
      const ids = [this.sotTokenId, ...this.encode(t), this.eotTokenId];
      if (ids.length > contextLength) {
        ids.length = contextLength;
        ids[contextLength - 1] = this.eotTokenId;
      }
      out.set(ids, r * contextLength);
    });
    return out;
  }
}
