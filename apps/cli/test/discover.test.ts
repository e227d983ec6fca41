import { test } from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { mkdir, mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { decodeImage, encodePng, initBackend, SafetensorsReader, SyntheticDataset } from '@vitreg/core';
import { getConfig, saveWeights, VisionTransformer } from '@vitreg/registers';
import { affinityHost, lostFromAffinity } from '@vitreg/probe';
import { nodeArgsOf } from './helpers.ts';

const here = dirname(fileURLToPath(import.meta.url));
const main = resolve(here, '../src/main.ts');
const fixtures = resolve(here, '../../../packages/registers/test/fixtures/dinov2-parity');

function vitreg(...args: string[]) {
  const r = spawnSync(process.execPath, [...nodeArgsOf(main), ...args], { encoding: 'utf8' });
  return { code: r.status, stdout: r.stdout, stderr: r.stderr };
}

const tmp = await mkdtemp(join(tmpdir(), 'vitreg-discover-'));
test.after(() => rm(tmp, { recursive: true, force: true }));

test('discover on a tensor matches LOST on the PyTorch reference keys, and reruns skip done images', async () => {
  const out = join(tmp, 'tensor');
  const args = [
    'discover',
    '--weights',
    join(fixtures, 'reg4.dinov2.safetensors'),
    '--config',
    '{"num_heads":3}',
    '--tensor',
    `${join(fixtures, 'reg4.reference.safetensors')}:rect98x140.input_nhwc`,
    '--backend',
    'wasm',
    '--out',
    out,
  ];
  const r = vitreg(...args);
  assert.equal(r.code, 0, r.stderr);
  const lines = (await readFile(join(out, 'results.jsonl'), 'utf8')).trim().split('\n');
  assert.equal(lines.length, 1);
  const rec = JSON.parse(lines[0]);
  // LOST by hand on the reference keys [1, 3, 75, 32] (tokens: CLS, 4 registers, 7x10 patches)
  const reader = await SafetensorsReader.open(join(fixtures, 'reg4.reference.safetensors'));
  const keys = await reader.readFloat32('rect98x140.last_keys');
  await reader.close();
  const [H, N, hd, P] = [3, 75, 32, 70];
  const f = new Float32Array(P * H * hd);
  for (let p = 0; p < P; p++)
    for (let h = 0; h < H; h++) for (let d = 0; d < hd; d++) f[p * H * hd + h * hd + d] = keys[(h * N + 5 + p) * hd + d];
  const ref = lostFromAffinity(affinityHost(f, P, H * hd), [7, 10], 14, { imageSize: { width: 140, height: 98 } });
  assert.deepEqual(rec.box, ref.box);
  assert.deepEqual(rec.seed, ref.seed);
  assert.deepEqual([rec.width, rec.height, rec.grid], [140, 98, [7, 10]]);
  assert.equal(rec.iou, undefined);
  assert.equal(existsSync(join(out, 'corloc.json')), false);
  // rerun: nothing new
  assert.equal(vitreg(...args).code, 0);
  assert.equal((await readFile(join(out, 'results.jsonl'), 'utf8')).trim().split('\n').length, 1);
  // a rerun with other settings into the same folder is refused
  const other = vitreg(...args, '--features', 'values');
  assert.equal(other.code, 2);
  assert.match(other.stderr, /features "keys", not "values"/);
});

test('discover on synthetic data writes scored lines, CorLoc, pictures, and resumes after a torn line', async () => {
  await initBackend('wasm', { log: () => {} });
  const weights = join(tmp, 'micro.safetensors');
  const model = new VisionTransformer(getConfig('vit_micro_patch8_reg4'), { seed: 2 });
  await saveWeights(model, weights);
  model.dispose();
  const out = join(tmp, 'synthetic');
  const args = [
    'discover',
    '--weights',
    weights,
    '--data',
    'synthetic',
    '--count',
    '4',
    '--synthetic-size',
    '36',
    '--pictures',
    '--batch-size',
    '2',
    '--backend',
    'wasm',
    '--out',
    out,
  ];
  const r = vitreg(...args);
  assert.equal(r.code, 0, r.stderr);
  const recs = (await readFile(join(out, 'results.jsonl'), 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  assert.deepEqual(
    recs.map((x) => x.image),
    [0, 1, 2, 3].map((i) => `synthetic-train-${i}`),
  );
  for (const x of recs) {
    assert.equal(x.box.length, 4);
    assert.ok(x.box[2] <= 36 && x.box[3] <= 36);
    assert.ok(x.iou >= 0 && x.iou <= 1);
    assert.equal(x.hit, x.iou >= 0.5);
    assert.ok(x.gt.length >= 1);
  }
  const c = JSON.parse(await readFile(join(out, 'corloc.json'), 'utf8'));
  assert.equal(c.images, 4);
  assert.equal(c.hits, recs.filter((x) => x.hit).length);
  assert.equal(c.corloc, c.hits / 4);
  const pics = (await readdir(join(out, 'pictures'))).sort();
  assert.equal(pics.length, 4);
  const png = await decodeImage(join(out, 'pictures', pics[0]));
  assert.deepEqual([png.width, png.height], [36, 36]);
  // simulate an interrupted run: two complete lines and a torn third one
  const text = await readFile(join(out, 'results.jsonl'), 'utf8');
  const kept = text.split('\n').slice(0, 2).join('\n') + '\n' + '{"image":"synthetic-tr';
  await writeFile(join(out, 'results.jsonl'), kept);
  assert.equal(vitreg(...args).code, 0);
  const again = (await readFile(join(out, 'results.jsonl'), 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  assert.deepEqual(again, recs);
});

test('discover reads VOC (1-based inclusive boxes) and COCO (crowd dropped) ground truth', async () => {
  const weights = join(tmp, 'micro.safetensors'); // written by the previous test
  const voc = join(tmp, 'VOC2007');
  await mkdir(join(voc, 'Annotations'), { recursive: true });
  await mkdir(join(voc, 'JPEGImages'), { recursive: true });
  const data = new SyntheticDataset({ seed: 5, count: 2, size: 36 });
  const coco = { images: [] as object[], annotations: [] as object[], categories: [{ id: 7, name: 'thing' }] };
  for (let i = 0; i < 2; i++) {
    const it = await data.get(i);
    await writeFile(join(voc, 'JPEGImages', `im${i}.png`), await encodePng(it.image, 36, 36));
    await writeFile(
      join(voc, 'Annotations', `im${i}.xml`),
      `<annotation><filename>im${i}.png</filename>
      <size><width>36</width><height>36</height><depth>3</depth></size>
      <object><name>cat</name><difficult>0</difficult><bndbox><xmin>3</xmin><ymin>5</ymin><xmax>20</xmax><ymax>30</ymax></bndbox></object>
      </annotation>`,
    );
    coco.images.push({ id: 10 + i, file_name: `im${i}.png`, width: 36, height: 36 });
    coco.annotations.push({ id: 2 * i, image_id: 10 + i, category_id: 7, bbox: [2, 4, 18, 26], iscrowd: 0, area: 1 });
    coco.annotations.push({ id: 2 * i + 1, image_id: 10 + i, category_id: 7, bbox: [0, 0, 36, 36], iscrowd: 1, area: 1 });
  }
  const cocoJson = join(tmp, 'instances.json');
  await writeFile(cocoJson, JSON.stringify(coco));
  const base = ['--weights', weights, '--backend', 'wasm'];
  // VOC on the tfjs engine, COCO on the default (onnxruntime where it loads): both engines end to end.
  const rv = vitreg('discover', ...base, '--engine', 'tfjs', '--data', voc, '--split', '*', '--out', join(tmp, 'voc'));
  assert.equal(rv.code, 0, rv.stderr);
  const vocRecs = (await readFile(join(tmp, 'voc', 'results.jsonl'), 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  assert.deepEqual(
    vocRecs.map((r) => r.image),
    ['im0', 'im1'],
  );
  assert.deepEqual(vocRecs[0].gt, [[2, 4, 20, 30]]);
  const rc = vitreg(
    'discover',
    ...base,
    '--data',
    cocoJson,
    '--images',
    join(voc, 'JPEGImages'),
    '--size',
    '32',
    '--out',
    join(tmp, 'coco'),
  );
  assert.equal(rc.code, 0, rc.stderr);
  const cocoRecs = (await readFile(join(tmp, 'coco', 'results.jsonl'), 'utf8'))
    .trim()
    .split('\n')
    .map((l) => JSON.parse(l));
  assert.deepEqual(
    cocoRecs.map((r) => r.image),
    ['10', '11'],
  );
  // --size 32: boxes scaled by 32/36 into the model input, the crowd box gone
  const s = 32 / 36;
  assert.equal(cocoRecs[0].gt.length, 1);
  cocoRecs[0].gt[0].forEach((v: number, k: number) => assert.ok(Math.abs(v - [2, 4, 20, 30][k] * s) < 1e-3));
  assert.ok(existsSync(join(tmp, 'coco', 'corloc.json')));
});

test('discover errors are one stderr line with exit code 2', () => {
  const noWeights = vitreg('discover', '--data', 'synthetic', '--out', join(tmp, 'x'));
  assert.equal(noWeights.code, 2);
  assert.match(noWeights.stderr, /--weights FILE is required/);
  const badTensor = vitreg(
    'discover',
    '--weights',
    join(fixtures, 'reg4.dinov2.safetensors'),
    '--config',
    '{"num_heads":3}',
    '--tensor',
    `${join(fixtures, 'reg4.reference.safetensors')}:nope`,
    '--backend',
    'wasm',
    '--out',
    join(tmp, 'y'),
  );
  assert.equal(badTensor.code, 2);
  assert.match(badTensor.stderr, /no tensor named "nope"/);
  assert.equal(
    badTensor.stderr
      .trim()
      .split('\n')
      .filter((l) => l.startsWith('vitreg')).length,
    1,
  );
  const badConfig = vitreg('discover', '--weights', 'w.safetensors', '--config', '{bad', '--data', 'synthetic', '--out', join(tmp, 'z'));
  assert.equal(badConfig.code, 2);
  assert.match(badConfig.stderr, /--config: expected a JSON object/);
  const two = vitreg('discover', '--weights', 'w.safetensors', '--data', 'synthetic', 'img.png', '--out', join(tmp, 'z'));
  assert.equal(two.code, 2);
  assert.match(two.stderr, /exactly one input/);
});
