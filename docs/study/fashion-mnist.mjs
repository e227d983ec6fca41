#!/usr/bin/env node
/**
 * Fashion-MNIST (Debian's dataset-fashion-mnist: IDX files under /usr/share/datasets/fashion-mnist) as
 * PNG folders that `vitreg train --data DIR` reads (DIR/train/<class>/*.png, DIR/val/<class>/*.png),
 * plus DIR/probe/ (the first --probe val images, flat, for `vitreg analyze`) and DIR/probe.coco.json
 * (their object boxes: the tight box of the garment's non-black pixels, for `vitreg discover --data`).
 *
 * --canvas N pastes each 28x28 item at a seeded random position on an N x N black canvas (N >= 28),
 * so most patches are empty background: the low-information patches the paper's outliers sit on.
 * Grey items are written as RGB (the trainer decodes three channels).
 *
 *   node docs/study/fashion-mnist.mjs --out /tmp/fm48 --canvas 48 --train 10000 --val 1000 --probe 64
 */
import { mkdirSync, readFileSync, writeFileSync, existsSync } from 'node:fs';
import { Buffer } from 'node:buffer';
import { gunzipSync } from 'node:zlib';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';

const SRC = '/usr/share/datasets/fashion-mnist';
const CLASSES = ['tshirt', 'trouser', 'pullover', 'dress', 'coat', 'sandal', 'shirt', 'sneaker', 'bag', 'boot'];

const { values: a } = parseArgs({
  options: {
    out: { type: 'string' },
    canvas: { type: 'string', default: '28' },
    train: { type: 'string', default: '10000' },
    val: { type: 'string', default: '1000' },
    probe: { type: 'string', default: '64' },
    seed: { type: 'string', default: '0' },
    classes: { type: 'string', default: '10' },
  },
});
if (!a.out) throw new Error('--out DIR is required');
const canvas = Number(a.canvas);
const nClasses = Number(a.classes);
if (!(canvas >= 28)) throw new Error(`--canvas ${a.canvas}: expected an integer >= 28`);
if (!(nClasses >= 2 && nClasses <= 10)) throw new Error(`--classes ${a.classes}: expected 2-10`);

function idx(file) {
  const path = join(SRC, file);
  if (!existsSync(path)) throw new Error(`${path} not found: apt-get install -y dataset-fashion-mnist`);
  const b = gunzipSync(readFileSync(path));
  const magic = b.readUInt32BE(0);
  const n = b.readUInt32BE(4);
  if (magic === 2051) return { n, rows: b.readUInt32BE(8), cols: b.readUInt32BE(12), data: b.subarray(16) };
  if (magic === 2049) return { n, data: b.subarray(8) };
  throw new Error(`${path}: magic ${magic}, expected an IDX image (2051) or label (2049) file`);
}

// mulberry32: a small seeded generator for the canvas positions
function rng(seed) {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x6d2b79f5) >>> 0;
    let t = s;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function write(split, images, labels, count, rand, probe) {
  const coco = { images: [], annotations: [], categories: CLASSES.slice(0, nClasses).map((name, id) => ({ id, name })) };
  let written = 0;
  for (let i = 0; i < images.n && written < count; i++) {
    const label = labels.data[i];
    if (label >= nClasses) continue;
    const px = images.data.subarray(i * 784, (i + 1) * 784);
    const ox = Math.floor(rand() * (canvas - 27));
    const oy = Math.floor(rand() * (canvas - 27));
    const rgb = Buffer.alloc(canvas * canvas * 3);
    let x0 = canvas,
      y0 = canvas,
      x1 = -1,
      y1 = -1;
    for (let y = 0; y < 28; y++) {
      for (let x = 0; x < 28; x++) {
        const v = px[y * 28 + x];
        const o = ((oy + y) * canvas + ox + x) * 3;
        rgb[o] = rgb[o + 1] = rgb[o + 2] = v;
        if (v > 16) {
          x0 = Math.min(x0, ox + x);
          y0 = Math.min(y0, oy + y);
          x1 = Math.max(x1, ox + x + 1);
          y1 = Math.max(y1, oy + y + 1);
        }
      }
    }
    const png = await sharp(rgb, { raw: { width: canvas, height: canvas, channels: 3 } })
      .png()
      .toBuffer();
    const dir = join(a.out, split, `${label}-${CLASSES[label]}`);
    mkdirSync(dir, { recursive: true });
    const name = `${split}-${String(i).padStart(5, '0')}.png`;
    writeFileSync(join(dir, name), png);
    if (probe && written < probe && x1 > x0) {
      mkdirSync(join(a.out, 'probe'), { recursive: true });
      writeFileSync(join(a.out, 'probe', name), png);
      coco.images.push({ id: written, file_name: name, width: canvas, height: canvas });
      coco.annotations.push({ id: written, image_id: written, category_id: label, bbox: [x0, y0, x1 - x0, y1 - y0], iscrowd: 0 });
    }
    written++;
  }
  if (probe) writeFileSync(join(a.out, 'probe.coco.json'), JSON.stringify(coco));
  return written;
}

const rand = rng(Number(a.seed));
const nTrain = await write('train', idx('train-images-idx3-ubyte.gz'), idx('train-labels-idx1-ubyte.gz'), Number(a.train), rand, 0);
const nVal = await write('val', idx('t10k-images-idx3-ubyte.gz'), idx('t10k-labels-idx1-ubyte.gz'), Number(a.val), rand, Number(a.probe));
console.log(JSON.stringify({ out: a.out, canvas, classes: nClasses, train: nTrain, val: nVal, probe: Math.min(nVal, Number(a.probe)) }));
