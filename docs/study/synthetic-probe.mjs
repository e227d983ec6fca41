#!/usr/bin/env node
/**
 * The built-in synthetic shapes (@vitreg/core's SyntheticDataset, val split) written as PNG files with a
 * COCO boxes file, so `vitreg analyze` and `vitreg discover` see the same images the study's tables
 * name (issue 24). Run through the source export condition:
 *
 *   node --conditions=vitreg-source --import tsx docs/study/synthetic-probe.mjs --out /tmp/syn48 --size 48 --count 64
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
  },
});
if (!a.out) throw new Error('--out DIR is required');
const ds = new SyntheticDataset({ seed: Number(a.seed), count: Number(a.count), size: Number(a.size), split: 'val' });
const dir = join(a.out, 'probe');
mkdirSync(dir, { recursive: true });
const coco = { images: [], annotations: [], categories: ds.classNames.map((name, id) => ({ id, name })) };
for (let i = 0; i < ds.length; i++) {
  const it = await ds.get(i);
  const name = `syn-${String(i).padStart(4, '0')}.png`;
  writeFileSync(
    join(dir, name),
    await sharp(Buffer.from(it.image), { raw: { width: it.width, height: it.height, channels: 3 } })
      .png()
      .toBuffer(),
  );
  coco.images.push({ id: i, file_name: name, width: it.width, height: it.height });
  const [x0, y0, x1, y1] = it.boxes[0];
  coco.annotations.push({ id: i, image_id: i, category_id: it.label, bbox: [x0, y0, x1 - x0, y1 - y0], iscrowd: 0 });
}
writeFileSync(join(a.out, 'probe.coco.json'), JSON.stringify(coco));
console.log(JSON.stringify({ out: a.out, count: ds.length, size: Number(a.size) }));
