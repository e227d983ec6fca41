/**
 * A safe reader for PyTorch checkpoints written by `torch.save` (the zip format, PyTorch >= 1.6,
 * as the official DINOv2 release ships them). Nothing in the file is ever executed: the zip is
 * parsed here, and `data.pkl` is interpreted by a small pickle machine that knows only the opcodes
 * and globals a state dict needs. Any other opcode or global is refused with an error naming it.
 *
 * Archive layout: `<archive>/data.pkl` (the pickled object), `<archive>/data/<key>` (one raw storage
 * per key), `<archive>/byteorder` (optional, "little" or "big"), `<archive>/version`.
 * Tensors are pickled as `torch._utils._rebuild_tensor_v2(storage, storage_offset, size, stride,
 * requires_grad, backward_hooks[, metadata])`, where `storage` is a persistent id
 * `("storage", torch.<Type>Storage, key, location, numel)`.
 *
 * This file reads the archive and collects the tensors; its parts: the zip container (zip.ts), the
 * pickle machine (pickle.ts) and the storages and strided views it rebuilds (pth-storage.ts).
 */
import { openForReading } from './fs.js';
import { describe, PyDict, Unpickler } from './pickle.js';
import { materialize, TensorSpec } from './pth-storage.js';
import { DTYPE_SIZE, swapBytes, type HostTensor } from './tensor.js';
import { ZipReader } from './zip.js';

/**
 * Reads a torch.save checkpoint into a flat record of tensors. Nested dicts are flattened with '.'
 * (`{"teacher": {"blocks.0.norm1.weight": t}}` gives `teacher.blocks.0.norm1.weight`); entries that
 * are not tensors or dicts (step counters, config strings, lists) are skipped.
 */
export async function readPth(path: string): Promise<Record<string, HostTensor>> {
  const fh = await openForReading(path);
  try {
    const zip = await ZipReader.open(path, fh);
    const pkl = zip.names().find((n) => n === 'data.pkl' || /^[^/]+\/data\.pkl$/.test(n));
    if (!pkl) throw new Error(`${path}: not a torch.save checkpoint: the zip archive has no <archive>/data.pkl entry`);
    const prefix = pkl.slice(0, pkl.length - 'data.pkl'.length);

    let bigEndian = false;
    if (zip.has(`${prefix}byteorder`)) {
      const order = new TextDecoder().decode(await zip.read(`${prefix}byteorder`)).trim();
      if (order !== 'little' && order !== 'big')
        throw new Error(`${path}: ${prefix}byteorder must be "little" or "big", got ${JSON.stringify(order)}`);
      bigEndian = order === 'big';
    }

    const root = new Unpickler(path, await zip.read(pkl)).load();
    const found: [string, TensorSpec][] = [];
    if (root instanceof TensorSpec) throw new Error(`${path}: holds a single tensor, expected a dict of tensors (a state dict)`);
    if (!(root instanceof PyDict))
      throw new Error(`${path}: top-level object is ${describe(root)}, expected a dict of tensors (a state dict)`);
    collectTensors(root, '', found, new Set());
    if (found.length === 0) throw new Error(`${path}: holds no tensors`);
    const seen = new Set<string>();
    for (const [name] of found) {
      if (seen.has(name)) throw new Error(`${path}: two tensors flatten to the same name "${name}"`);
      seen.add(name);
    }

    // Load each storage once; tensors that cover a whole storage use its bytes without a copy.
    const storages = new Map<string, Uint8Array>();
    const out: [string, HostTensor][] = [];
    for (const [name, spec] of found) {
      const s = spec.storage;
      let bytes = storages.get(s.key);
      if (!bytes) {
        const entry = `${prefix}data/${s.key}`;
        if (!zip.has(entry)) throw new Error(`${path}: tensor "${name}": storage entry ${entry} is missing from the archive`);
        bytes = await zip.read(entry);
        const need = s.numel * DTYPE_SIZE[s.dtype];
        if (bytes.byteLength !== need)
          throw new Error(
            `${path}: tensor "${name}": storage ${entry} holds ${bytes.byteLength} bytes, expected ${s.numel} x ${s.dtype} = ${need}`,
          );
        if (bigEndian) bytes = swapBytes(bytes, DTYPE_SIZE[s.dtype]);
        storages.set(s.key, bytes);
      }
      out.push([name, materialize(path, name, spec, bytes)]);
    }
    return Object.fromEntries(out); // own properties even for a name like "__proto__"
  } finally {
    await fh.close();
  }
}

/** Walks nested dicts collecting tensors under dotted names; cycles and other values are skipped. */
function collectTensors(dict: PyDict, prefix: string, out: [string, TensorSpec][], open: Set<PyDict>): void {
  open.add(dict);
  for (const [key, value] of dict.map) {
    const name = prefix + String(key);
    if (value instanceof TensorSpec) out.push([name, value]);
    else if (value instanceof PyDict && !open.has(value) && open.size < 64) collectTensors(value, name + '.', out, open);
  }
  open.delete(dict);
}
