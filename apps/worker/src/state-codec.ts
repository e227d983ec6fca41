/** The bytes of a state broadcast: rank 0's named float32 arrays and its JSON meta, in one buffer. */

/** [u32 JSON length][JSON {names, sizes, meta}][zero padding to 4][float32 values]. */
export function encodeState(state: Record<string, Float32Array>, meta: unknown): Uint8Array {
  const names = Object.keys(state);
  const sizes = names.map((k) => state[k]!.length);
  const json = new TextEncoder().encode(JSON.stringify({ names, sizes, meta: meta ?? null }));
  const head = 4 + json.length + ((4 - ((4 + json.length) % 4)) % 4);
  const total = sizes.reduce((a, b) => a + b, 0);
  const out = new Uint8Array(head + 4 * total);
  new DataView(out.buffer).setUint32(0, json.length, true);
  out.set(json, 4);
  const floats = new Float32Array(out.buffer, head, total);
  let off = 0;
  for (const k of names) {
    floats.set(state[k]!, off);
    off += state[k]!.length;
  }
  return out;
}

/**
 * The state and meta of `encodeState`'s bytes. The arrays are views of `bytes` where its values lie on a
 * 4-byte boundary (the received payload: no second copy of the state while the engine imports it), else copies.
 */
export function decodeState(bytes: Uint8Array): { state: Record<string, Float32Array>; meta: unknown } {
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const len = view.getUint32(0, true);
  const layout = JSON.parse(new TextDecoder().decode(bytes.subarray(4, 4 + len))) as { names: string[]; sizes: number[]; meta: unknown };
  const { names, sizes, meta } = layout;
  const head = 4 + len + ((4 - ((4 + len) % 4)) % 4);
  const state: Record<string, Float32Array> = {};
  let off = bytes.byteOffset + head;
  const aligned = off % 4 === 0;
  names.forEach((k, i) => {
    state[k] = aligned ? new Float32Array(bytes.buffer, off, sizes[i]!) : new Float32Array(bytes.buffer.slice(off, off + 4 * sizes[i]!));
    off += 4 * sizes[i]!;
  });
  return { state, meta };
}
