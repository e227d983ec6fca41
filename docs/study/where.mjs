#!/usr/bin/env node
/**
 * Where the largest patch tokens sit (issue 24): for each image of a `vitreg analyze` output folder
 * (OUT/<image>/stats.json, or OUT/<image>/b/stats.json with --b), the last block's largest patch norm
 * (prenorm) and whether that patch overlaps the object's box (a COCO file, by image file name), and the
 * median norm of object and of background patches. The paper's artifacts sit on background patches.
 *
 *   node docs/study/where.mjs ANALYZE_OUT PROBE.coco.json [--b]
 */
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';

const [dir, cocoFile, flag] = process.argv.slice(2);
if (!cocoFile) throw new Error('usage: node docs/study/where.mjs ANALYZE_OUT PROBE.coco.json [--b]');
const coco = JSON.parse(readFileSync(cocoFile, 'utf8'));
const boxes = new Map(
  coco.images.map((im) => [im.file_name.replace(/\.[^.]+$/, ''), coco.annotations.find((a) => a.image_id === im.id).bbox]),
);
const median = (v) => {
  const s = [...v].sort((a, b) => a - b);
  return s.length ? (s[(s.length - 1) >> 1] + s[s.length >> 1]) / 2 : NaN;
};
let onObject = 0;
let images = 0;
const ratios = [];
const objMed = [];
const bgMed = [];
for (const name of readdirSync(dir).sort()) {
  const f = join(dir, name, flag === '--b' ? 'b' : '', 'stats.json');
  if (!existsSync(f) || !boxes.has(name)) continue;
  const s = JSON.parse(readFileSync(f, 'utf8'));
  const [rows, cols] = s.grid;
  const [h, w] = s.size;
  const [bx, by, bw, bh] = boxes.get(name);
  const norms = s.norms.patches.prenorm;
  const ph = h / rows;
  const pw = w / cols;
  const inBox = norms.map((_, i) => {
    const r = Math.floor(i / cols);
    const c = i % cols;
    return c * pw < bx + bw && (c + 1) * pw > bx && r * ph < by + bh && (r + 1) * ph > by;
  });
  const top = norms.indexOf(Math.max(...norms));
  images++;
  if (inBox[top]) onObject++;
  ratios.push(norms[top] / median(norms));
  objMed.push(median(norms.filter((_, i) => inBox[i])));
  bgMed.push(median(norms.filter((_, i) => !inBox[i])));
}
console.log(
  JSON.stringify({
    images,
    topOnObject: onObject,
    medianTopOverMedian: +median(ratios).toFixed(2),
    medianObjectNorm: +median(objMed).toPrecision(4),
    medianBackgroundNorm: +median(bgMed).toPrecision(4),
  }),
);
