/**
 * CLIP's BPE tokenizer against open_clip's SimpleTokenizer (fixtures in test/fixtures/clip-text, written by
 * make_tokenizer.py: a tiny merges file in bpe_simple_vocab_16e6.txt.gz's format and open_clip's ids for a
 * corpus with case, whitespace, contractions, digits, punctuation, HTML entities, accents, CJK, emoji, the
 * special tokens, an empty text and truncation), the ftfy stand-in on what ftfy does to well-formed text, and
 * the errors for bad vocabulary files.
 */
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { ClipTokenizer, cleanText, fixText, wordMerges } from '../src/index.ts';

const DIR = join(dirname(fileURLToPath(import.meta.url)), 'fixtures', 'clip-text');

describe('CLIP tokenizer', () => {
  test("the same ids as open_clip's SimpleTokenizer on the test corpus (tiny vocabulary, context 24)", async () => {
    const ref = JSON.parse(await readFile(join(DIR, 'tokenizer.json'), 'utf8')) as {
      corpus: string[];
      context_length: number;
      tokenize: number[][];
      encode: number[][];
      vocab_size: number;
      sot: number;
      eot: number;
    };
    const tok = await ClipTokenizer.fromFile(join(DIR, 'bpe_tiny.txt.gz'), { contextLength: ref.context_length });
    assert.equal(tok.vocabSize, ref.vocab_size);
    assert.equal(tok.sotTokenId, ref.sot);
    assert.equal(tok.eotTokenId, ref.eot);
    ref.corpus.forEach((text, i) => assert.deepEqual(tok.encode(text), ref.encode[i], `encode(${JSON.stringify(text)})`));
    const rows = tok.tokenize(ref.corpus);
    ref.corpus.forEach((text, i) =>
      assert.deepEqual(Array.from(rows.subarray(i * 24, (i + 1) * 24)), ref.tokenize[i], `tokenize(${JSON.stringify(text)})`),
    );
    assert.equal(tok.decode(tok.encode('a photo of a dog')), 'a photo of a dog ');
  });

  test('wordMerges: every word of a closed vocabulary is one token', () => {
    const words = 'a on dark background small large light bright circle square triangle striped checkered'.split(' ');
    const tok = new ClipTokenizer(wordMerges(words));
    for (const w of words) assert.equal(tok.encode(w).length, 1, w);
    assert.equal(tok.encode('a small bright triangle on a dark striped background').length, 9);
    assert.equal(tok.decode(tok.encode('large checkered circle')), 'large checkered circle ');
  });

  test('fixText does what ftfy.fix_text does to well-formed text', () => {
    assert.equal(fixText('\u201cquoted\u201d \u2018x\u2019'), '"quoted" \'x\'');
    assert.equal(fixText('\ufb01sh \ufb02ow'), 'fish flow');
    assert.equal(fixText('\uff21\uff22\uff23\u3000\uff11'), 'ABC 1');
    assert.equal(fixText('e\u0301'), '\u00e9');
    assert.equal(fixText('a\u0000b\u0007c\td'), 'abc\td');
    assert.equal(cleanText('  Two&amp;amp;Three \u00a0 Four '), 'two&three four');
  });

  test('bad vocabulary files are refused, naming the file', async () => {
    const dir = await mkdtemp(join(tmpdir(), 'vitreg-tok-'));
    try {
      await assert.rejects(ClipTokenizer.fromFile(join(dir, 'none.txt.gz')), /none\.txt\.gz: cannot read/);
      await writeFile(join(dir, 'bad.gz'), Buffer.from([0x1f, 0x8b, 1, 2, 3]));
      await assert.rejects(ClipTokenizer.fromFile(join(dir, 'bad.gz')), /bad\.gz: not a valid gzip file/);
      await writeFile(join(dir, 'words.txt'), 'hello\nworld\n');
      await assert.rejects(ClipTokenizer.fromFile(join(dir, 'words.txt')), /words\.txt: not a BPE merges file/);
      assert.throws(() => new ClipTokenizer('#v\na b\n', { contextLength: 1 }), /contextLength must be an integer >= 2/);
    } finally {
      await rm(dir, { recursive: true, force: true });
    }
  });
});
