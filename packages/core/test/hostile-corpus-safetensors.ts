/**
 * Builders of valid and hostile safetensors files for the hostile-file and fuzz tests and the hostile
 * corpus (hostile-corpus.ts re-exports them): huge shapes and strings, many tensors or values, deep
 * headers. Not part of the library.
 */
/** A safetensors file from a header object and a data buffer. */
export function safetensorsBytes(header: unknown, data: Uint8Array): Buffer {
  const json = Buffer.from(JSON.stringify(header));
  const pad = (8 - (json.length % 8)) % 8;
  const h = Buffer.concat([json, Buffer.alloc(pad, 0x20)]);
  const n = Buffer.alloc(8);
  n.writeBigUInt64LE(BigInt(h.length));
  return Buffer.concat([n, h, data]);
}

/** A header of `n` one-element F32 tensors whose data is 4 bytes short: the last tensor runs past the end. */
export function manyTensorsSafetensors(n: number): Buffer {
  const header: Record<string, unknown> = {};
  for (let i = 0; i < n; i++) header[`t${i}`] = { dtype: 'F32', shape: [1], data_offsets: [4 * i, 4 * i + 4] };
  return safetensorsBytes(header, new Uint8Array(4 * n - 4));
}

/** A header `{"a": [[[[...]]]]}` nested `depth` deep (JSON.parse would make one array per level). */
export function deepHeaderSafetensors(depth: number): Buffer {
  return rawHeaderSafetensors(
    Buffer.concat([Buffer.from('{"a":'), Buffer.alloc(depth, 0x5b), Buffer.alloc(depth, 0x5d), Buffer.from('}')]),
  );
}

/** One tensor, whose data is missing, with an extra field holding `count` empty objects (JSON.parse would make each). */
export function manyValuesSafetensors(count: number): Buffer {
  const head = Buffer.from('{"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":[');
  const body = Buffer.alloc(3 * count - 1, '{},');
  return rawHeaderSafetensors(Buffer.concat([head, body, Buffer.from(']}}')]));
}

/** A safetensors file whose header is these JSON bytes (padded to 8) and `data` (none by default). */
export function rawHeaderSafetensors(json: Buffer, data: Uint8Array = new Uint8Array(0)): Buffer {
  const pad = (8 - (json.length % 8)) % 8;
  const n = Buffer.alloc(8);
  n.writeBigUInt64LE(BigInt(json.length + pad));
  return Buffer.concat([n, json, Buffer.alloc(pad, 0x20), data]);
}

/**
 * One F32 tensor `w` [1] over 4 bytes of data, with one `bytes`-long string of `a`s in its header: the
 * value of `__metadata__`'s key `x`, or the tensor's name; `badOffset` makes the tensor end 4 bytes
 * past the data (refused after the header is parsed).
 */
export function hugeStringSafetensors(where: 'metadata' | 'name', bytes: number, badOffset = false): Buffer {
  const entry = `{"dtype":"F32","shape":[1],"data_offsets":[0,${badOffset ? 8 : 4}]}`;
  const big = Buffer.alloc(bytes, 'a');
  const json =
    where === 'metadata'
      ? [Buffer.from('{"__metadata__":{"x":"'), big, Buffer.from(`"},"w":${entry}}`)]
      : [Buffer.from('{"'), big, Buffer.from(`":${entry}}`)];
  return rawHeaderSafetensors(Buffer.concat(json), new Uint8Array(4));
}

/** `n` one-element F32 tensors whose names are `nameBytes` long (a few huge strings), all valid. */
export function longNamesSafetensors(n: number, nameBytes: number): Buffer {
  const parts: Buffer[] = [Buffer.from('{')];
  for (let i = 0; i < n; i++) {
    const id = `${i},`;
    parts.push(Buffer.from(`${i ? ',' : ''}"`), Buffer.alloc(nameBytes - id.length, 'n'), Buffer.from(id));
    parts.push(Buffer.from(`":{"dtype":"F32","shape":[1],"data_offsets":[${4 * i},${4 * i + 4}]}`));
  }
  parts.push(Buffer.from('}'));
  return rawHeaderSafetensors(Buffer.concat(parts), new Uint8Array(4 * n));
}

/** A small valid safetensors file: w [2, 3] F32 and b [3] F16. */
export function validSafetensors(): Buffer {
  return safetensorsBytes(
    {
      __metadata__: { model: 'tiny' },
      w: { dtype: 'F32', shape: [2, 3], data_offsets: [0, 24] },
      b: { dtype: 'F16', shape: [3], data_offsets: [24, 30] },
    },
    new Uint8Array(30).fill(0x3c),
  );
}
