/**
 * Builders of image decompression bombs for the hostile-file tests and the hostile corpus
 * (hostile-corpus.ts re-exports them): a valid PNG of zeros of any size, a JPEG whose frame header
 * declares a huge size; the CRC-32 both PNG chunks and zip entries use. Not part of the library.
 */
import { deflateRawSync, constants as zc } from 'node:zlib';

const CRC_TABLE = Array.from({ length: 256 }, (_, n) => {
  let c = n;
  for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
  return c >>> 0;
});

/** CRC-32 (PNG chunks; zip entries too, hostile-corpus.ts). */
export function crc32(b: Uint8Array): number {
  let c = 0xffffffff;
  for (let i = 0; i < b.length; i++) c = CRC_TABLE[(c ^ b[i]!) & 0xff]! ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}

/** A PNG chunk: length, type, data, CRC. */
function pngChunk(type: string, data: Buffer): Buffer {
  const len = Buffer.alloc(4);
  len.writeUInt32BE(data.length);
  const body = Buffer.concat([Buffer.from(type, 'latin1'), data]);
  const crc = Buffer.alloc(4);
  crc.writeUInt32BE(crc32(body));
  return Buffer.concat([len, body, crc]);
}

/** A zlib stream of `n` zero bytes built from repeated 1 MiB deflate blocks (no `n`-byte buffer is made). */
function zerosZlib(n: number): Buffer {
  const MiB = 2 ** 20;
  const block = deflateRawSync(Buffer.alloc(MiB), { finishFlush: zc.Z_SYNC_FLUSH });
  const adler = Buffer.alloc(4);
  adler.writeUInt32BE((((n % 65521) << 16) | 1) >>> 0); // Adler-32 of n zeros
  const blocks: Buffer[] = Array.from({ length: Math.floor(n / MiB) }, () => block);
  return Buffer.concat([Buffer.from([0x78, 0x9c]), ...blocks, deflateRawSync(Buffer.alloc(n % MiB)), adler]);
}

/** A valid `w` x `h` 8-bit RGB PNG of zeros: a decompression bomb (12000 x 12000 is 427 KB, 432 MB decoded). */
export function pngBomb(w: number, h: number): Buffer {
  const ihdr = Buffer.alloc(13);
  ihdr.writeUInt32BE(w, 0);
  ihdr.writeUInt32BE(h, 4);
  ihdr[8] = 8; // bit depth
  ihdr[9] = 2; // RGB
  const signature = Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]);
  return Buffer.concat([
    signature,
    pngChunk('IHDR', ihdr),
    pngChunk('IDAT', zerosZlib(h * (1 + 3 * w))),
    pngChunk('IEND', Buffer.alloc(0)),
  ]);
}

/** An 8 x 8 baseline JPEG (sharp, quality 50); its SOF0 height and width are at bytes 145 and 147. */
const JPEG_8X8 =
  '/9j/2wBDABALDA4MChAODQ4SERATGCgaGBYWGDEjJR0oOjM9PDkzODdASFxOQERXRTc4UG1RV19iZ2hnPk1xeXBkeFxlZ2P/2wBDARESEhgVGC8aGi9jQjhCY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2NjY2P/wAARCAAIAAgDASIAAhEBAxEB/8QAFQABAQAAAAAAAAAAAAAAAAAAAAb/xAAUEAEAAAAAAAAAAAAAAAAAAAAA/8QAFAEBAAAAAAAAAAAAAAAAAAAAAv/EABQRAQAAAAAAAAAAAAAAAAAAAAD/2gAMAwEAAhEDEQA/AIgAwf/Z';

/** A JPEG whose frame header declares `w` x `h` over the data of an 8 x 8 one. */
export function jpegBomb(w: number, h: number): Buffer {
  const b = Buffer.from(JPEG_8X8, 'base64');
  b.writeUInt16BE(h, 145);
  b.writeUInt16BE(w, 147);
  return b;
}
