#!/usr/bin/env node
/**
 * The built-in synthetic shapes (@vitreg/core's SyntheticDataset) written as PNG files with a COCO boxes
 * file, so `vitreg analyze` and `vitreg discover` see the same images the study's tables name (issue 24):
 * OUT/probe/ (the first --count val images) and OUT/probe.coco.json (their main-shape boxes). With
 * --train N it also writes OUT/train/<class>/ and OUT/val/<class>/ (--val images) for `vitreg train
 * --data OUT`. --background flat and --object-side LO,HI select the generator's flat, information-free
 * background and the main shape's side range (data.synthetic_background / data.synthetic_object_side).
 * Run through the source export condition:
 *
 *   node --conditions=vitreg-source --import tsx docs/study/synthetic-probe.mjs --out /tmp/syn48 --size 48 --count 64
 *   node --conditions=vitreg-source --import tsx docs/study/synthetic-probe.mjs --out /tmp/flat48 --size 48 \
 *     --background flat --object-side 0.2,0.3 --train 5000 --val 500 --count 64
 */
import { mkdirSync, writeFileSync } from 'node:fs';
import { Buffer } from 'node:buffer';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import sharp from 'sharp';
import { SyntheticDataset } from '@vitreg/core';

const { values: a } = parseArgs({
  options: {
    out: { type: 'string' },
    size: { type: 'string', default: '48' },
    count: { type: 'string', default: '64' },
    seed: { type: 'string', default: '7' },
    train: { type: 'string', default: '0' },
    val: { type: 'string', default: '500' },
    background: { type: 'string', default: 'textured' },
    'object-side': { type: 'string' },
  },
});
if (!a.out) throw new Error('--out DIR is required');
const objectSide = a['object-side'] ? a['object-side'].split(',').map(Number) : undefined;
const common = { seed: Number(a.seed), size: Number(a.size), background: a.background, objectSide };
const png = (it) =>
  sharp(Buffer.from(it.image), { raw: { width: it.width, height: it.height, channels: 3 } })
    .png()
    .toBuffer();

const probeCount = Number(a.count);
const nVal = Math.max(probeCount, Number(a.train) > 0 ? Number(a.val) : 0);
const val = new SyntheticDataset({ ...common, count: nVal, split: 'val' });
const dir = join(a.out, 'probe');
mkdirSync(dir, { recursive: true });
const coco = { images: [], annotations: [], categories: val.classNames.map((name, id) => ({ id, name })) };
for (let i = 0; i < probeCount; i++) {
  const it = await val.get(i);
  const name = `syn-${String(i).padStart(4, '0')}.png`;
  writeFileSync(join(dir, name), await png(it));
  coco.images.push({ id: i, file_name: name, width: it.width, height: it.height });
  const [x0, y0, x1, y1] = it.boxes[0];
  coco.annotations.push({ id: i, image_id: i, category_id: it.label, bbox: [x0, y0, x1 - x0, y1 - y0], iscrowd: 0 });
}
writeFileSync(join(a.out, 'probe.coco.json'), JSON.stringify(coco));

/** Class folders of one split: OUT/<split>/<label>-<shape>/<split>-<index>.png. */
async function folders(ds, split) {
  for (let i = 0; i < ds.length; i++) {
    const it = await ds.get(i);
    const d = join(a.out, split, `${it.label}-${ds.classNames[it.label]}`);
    mkdirSync(d, { recursive: true });
    writeFileSync(join(d, `${split}-${String(i).padStart(5, '0')}.png`), await png(it));
  }
}
if (Number(a.train) > 0) {
  await folders(new SyntheticDataset({ ...common, count: Number(a.train), split: 'train' }), 'train');
  await folders(val, 'val');
}
console.log(JSON.stringify({ out: a.out, probe: probeCount, train: Number(a.train), val: Number(a.train) > 0 ? nVal : 0, ...common }));
