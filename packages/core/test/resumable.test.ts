import assert from 'node:assert/strict';
import { existsSync } from 'node:fs';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import {
  describeSettingsChanges,
  InputError,
  JsonLinesLog,
  readFinishedResult,
  RowFiles,
  settingsChanges,
  SettingsMismatchError,
  stampSettings,
  writeJsonAtomic,
} from '../src/index.js';

const dir = await mkdtemp(join(tmpdir(), 'vitreg-resumable-'));
after(() => rm(dir, { recursive: true, force: true }));

test('settingsChanges compares values as JSON, over the given keys or every key of either side', () => {
  const a = { steps: 20, size: 56, data: { a: [1, 2] }, only: 1 };
  const b = { steps: 30, size: 56, data: { a: [1, 2] }, extra: null };
  assert.deepEqual(
    settingsChanges(a, b).map((c) => c.key),
    ['steps', 'only', 'extra'],
  );
  assert.deepEqual(settingsChanges(a, b, ['size', 'steps']), [{ key: 'steps', before: 20, now: 30 }]);
  assert.equal(describeSettingsChanges(settingsChanges(a, b, ['steps', 'only'])), 'steps 20, not 30; only 1, not undefined');
});

test('readFinishedResult: null without a file or without settings, the result when they match, an error naming what differs', async () => {
  const file = join(dir, 'results.json');
  assert.equal(await readFinishedResult(file, { steps: 1 }), null);
  await writeJsonAtomic(file, { accuracy: 0.5 });
  assert.equal(await readFinishedResult(file, { steps: 1 }), null, 'written before results recorded their settings');
  await writeJsonAtomic(file, { settings: { steps: 20, size: 56 }, accuracy: 0.5 });
  const same = await readFinishedResult<{ accuracy: number }>(file, { steps: 20, size: 56 });
  assert.deepEqual(same, { settings: { steps: 20, size: 56 }, accuracy: 0.5 });
  await assert.rejects(readFinishedResult(file, { steps: 30, size: 56 }), (err: Error) => {
    assert.ok(err instanceof SettingsMismatchError && err instanceof InputError);
    assert.equal(err.file, file);
    assert.deepEqual(err.changes, [{ key: 'steps', before: 20, now: 30 }]);
    assert.equal(err.message, `${file} holds the results of a run with other settings (steps 20, not 30)`);
    return true;
  });
});

test('stampSettings writes the settings and refuses other values of the compared keys only', async () => {
  const file = join(dir, 'run.json');
  await stampSettings(file, { weights: 'a', k: 100, config: { depth: 1 } }, ['weights', 'k']);
  await stampSettings(file, { weights: 'a', k: 100, config: { depth: 2 } }, ['weights', 'k']);
  assert.deepEqual(JSON.parse(await readFile(file, 'utf8')), { weights: 'a', k: 100, config: { depth: 2 } });
  await assert.rejects(stampSettings(file, { weights: 'a', k: 50 }, ['weights', 'k']), (err: SettingsMismatchError) => {
    assert.deepEqual(err.changes, [{ key: 'k', before: 100, now: 50 }]);
    return true;
  });
  assert.equal(JSON.parse(await readFile(file, 'utf8')).k, 100, 'a refused run leaves the file as it was');
});

test('JsonLinesLog appends records and, read again, cuts off a torn last line', async () => {
  const log = new JsonLinesLog<{ image: string; hit?: boolean }>(join(dir, 'results.jsonl'));
  assert.deepEqual(await log.read(), []);
  await log.append([{ image: 'a', hit: true }, { image: 'b' }]);
  await log.append([{ image: 'c' }]);
  assert.deepEqual(
    (await log.read()).map((r) => r.image),
    ['a', 'b', 'c'],
  );
  const text = await readFile(log.path, 'utf8');
  await writeFile(log.path, text + '{"image":"d","hi');
  assert.deepEqual(
    (await log.read()).map((r) => r.image),
    ['a', 'b', 'c'],
  );
  assert.equal(await readFile(log.path, 'utf8'), text, 'the torn line is cut off');
  await log.append([{ image: 'd' }]);
  assert.deepEqual(
    (await log.read()).map((r) => r.image),
    ['a', 'b', 'c', 'd'],
  );
});

test('RowFiles: rows appended per batch come back, extra bytes are cut, other settings and short files are errors', async () => {
  const sub = join(dir, 'cache');
  const files = { x: 'x.f32', t: 'targets.bin' };
  const open = (settings: unknown) => new RowFiles({ dir: sub, name: 'train', settings, files, label: 'test: the cache', unit: 'images' });
  const rowBytes = { x: 8, t: 2 };
  const rows = open({ size: 4 });
  assert.deepEqual((await rows.load(rowBytes)).count, 0);
  await rows.append({ x: new Uint8Array(16).fill(1), t: new Uint8Array([1, 2, 3, 4]) }, 2);
  await rows.append({ x: new Uint8Array(8).fill(2), t: new Uint8Array([5, 6]) }, 3);
  // An append cut short after the data (before the record): the extra row is dropped when loaded.
  await writeFile(rows.paths.x, new Uint8Array(8).fill(9), { flag: 'a' });
  const got = await open({ size: 4 }).load(rowBytes);
  assert.equal(got.count, 3);
  assert.deepEqual([...got.rows.t], [1, 2, 3, 4, 5, 6]);
  assert.deepEqual([...got.rows.x.subarray(16)], new Array(8).fill(2));
  assert.equal((await readFile(rows.paths.x)).length, 24, 'the file is cut back to the recorded rows');
  assert.deepEqual(JSON.parse(await readFile(rows.record, 'utf8')), { settings: { size: 4 }, count: 3 });
  // A stream not used this time (0 bytes per row) comes back empty.
  assert.equal((await open({ size: 4 }).load({ x: 8, t: 0 })).rows.t.length, 0);
  await assert.rejects(open({ size: 8 }).load(rowBytes), (err: Error) => {
    assert.ok(err instanceof SettingsMismatchError);
    const want = `test: the cache ${rows.record} was made with other settings ({"size":4}); delete ${sub} or use another folder`;
    assert.equal(err.message, want);
    return true;
  });
  await writeFile(rows.paths.x, new Uint8Array(4));
  const short = /test: the cache .*train\.x\.f32 holds 4 bytes, its record says 3 images \(24 bytes\)/;
  await assert.rejects(open({ size: 4 }).load(rowBytes), short);
  assert.ok(existsSync(rows.record));
});
