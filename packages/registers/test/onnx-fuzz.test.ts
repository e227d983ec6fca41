/**
 * Seeded fuzzing of the ONNX file reader (`readOnnxInfo`, what vitreg reads of an .onnx file before ONNX
 * Runtime loads it): mutated exports of a micro model end in the file's metadata or a one-line error
 * naming the file, within a time bound. (ONNX Runtime's own parser is native code, not fuzzed here.)
 */
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { initBackend, Rng } from '@vitreg/core';
import { mutate } from '../../core/test/hostile-corpus.js';
import { getConfig } from '../src/config.js';
import { VisionTransformer } from '../src/model.js';
import { onnxModelBytes } from '../src/onnx-export.js';
import { readOnnxInfo } from '../src/onnx-proto.js';
import { stateDictOf } from '../src/weights.js';

const dir = await mkdtemp(join(tmpdir(), 'vitreg-onnx-fuzz-'));
after(() => rm(dir, { recursive: true, force: true }));

test('mutated .onnx files: metadata or a one-line error naming the file', async () => {
  await initBackend('wasm', { verbose: false });
  const config = getConfig('vit_micro_patch8_reg4');
  const model = new VisionTransformer(config, { seed: 3, trainable: false });
  const base = onnxModelBytes(config, await stateDictOf(model), { height: 32, width: 32 });
  model.dispose();
  const rng = new Rng(21);
  const deadline = performance.now() + 4000;
  let refused = 0;
  for (let i = 0; i < 200 && performance.now() < deadline; i++) {
    const file = join(dir, `m-${i}.onnx`);
    await writeFile(file, mutate(base, rng));
    const t = performance.now();
    try {
      await readOnnxInfo(file);
    } catch (err) {
      refused++;
      assert.ok(err instanceof Error && !(err instanceof TypeError) && !(err instanceof RangeError), `${file}: ${String(err)}`);
      assert.ok(err.message.includes(file) && !err.message.includes('\n'), `${file}: ${err.message}`);
    }
    assert.ok(performance.now() - t < 2000, `${file}: took ${performance.now() - t} ms`);
  }
  assert.ok(refused > 20, `only ${refused} refused`);
});
