/** PNG output of canvases: encoded by sharp (core's encodePng), written atomically. */
import { encodePng, writeFileAtomic } from '@vitreg/core';
import type { Canvas } from './canvas.js';

export function canvasToPng(c: Canvas): Promise<Buffer> {
  return encodePng(c.data, c.width, c.height, 3);
}

/** Write a canvas as a PNG file (temporary file, fsync, rename). */
export async function savePng(path: string, c: Canvas): Promise<void> {
  await writeFileAtomic(path, await canvasToPng(c));
}
