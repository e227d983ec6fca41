/** Files of the wrong kind are named as such by the readers (issue 23), for a library user as for the CLI. */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { readPth, SafetensorsReader, writeSafetensors } from '@vitreg/core';

test('a file of another kind is "not a safetensors file" / "not a zip archive", saying what it is', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'vitreg-kind-'));
  try {
    const md = join(dir, 'README.md');
    await writeFile(md, '# vitreg\n\nVision Transformers with registers on TensorFlow.js: build, load and train.\n');
    const png = join(dir, 'x.png');
    await writeFile(png, Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a, 0, 0, 0, 13, 73, 72, 68, 82]));
    const zip = join(dir, 'model.safetensors');
    await writeFile(zip, Buffer.from([0x50, 0x4b, 0x03, 0x04, 0x14, 0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0]));
    const st = join(dir, 'w.pth');
    await writeSafetensors(st, { x: { dtype: 'F32', shape: [1], data: new Uint8Array(4) } });
    const open = (p: string) => SafetensorsReader.open(p).then((r) => r.close());
    await assert.rejects(open(md), { message: `${md} is not a safetensors file: it is text ("# vitreg...")` });
    await assert.rejects(open(png), { message: `${png} is not a safetensors file: it is a PNG image` });
    await assert.rejects(
      open(zip),
      /model\.safetensors is not a safetensors file: it is a zip archive \(a PyTorch \.pth checkpoint\? name it \.pth\)/,
    );
    await assert.rejects(
      readPth(md),
      /README\.md: not a zip archive \(torch\.save checkpoints are zip files\): it is text \("# vitreg\.\.\."\)/,
    );
    await assert.rejects(readPth(st), /w\.pth: not a zip archive .*: it is a safetensors file$/);
  } finally {
    await rm(dir, { recursive: true, force: true });
  }
});
