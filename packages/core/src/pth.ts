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
 *
 * Limits against hostile files (each refused with an error naming the file): data.pkl at most
 * `PTH_LIMITS.pickleBytes`, and if deflated (torch.save stores it) at most 1 MiB + `pickleDeflateRatio` x its
 * deflated size; the pickle machine's own limits (pickle.ts), its work budget following the archive's size
 * when that is smaller than data.pkl (a deflated data.pkl within the ratio); each storage entry exactly numel x dtype size (checked before it
 * is read, zip.ts); at most `PTH_LIMITS.names` dict entries walked; names of at most `PTH_LIMITS.nameChars`
 * characters, made only from string and integer keys (never by stringifying a tuple or other object: a key
 * built of nested tuples reusing each other through the memo doubles in size per level); views copied out of
 * their storage (strides) may total at most the file's size plus `PTH_LIMITS.copyBytes` (a stride-0 view of a
 * huge shape cannot allocate terabytes; a real checkpoint's view holds at most its storage's elements).
 */
import { InputError } from './errors.js';
import { openForReading } from './fs.js';
import { describe, PyDict, Unpickler } from './pickle.js';
import { materialize, TensorSpec } from './pth-storage.js';
import { DTYPE_SIZE, swapBytes, type HostTensor } from './tensor.js';
import { ZipReader } from './zip.js';

/** Limits of readPth beyond the zip's and the pickle machine's. */
export const PTH_LIMITS = {
  /** Bytes of data.pkl (a state dict's pickle is a few hundred bytes per tensor). */
  pickleBytes: 256 * 2 ** 20,
  /**
   * A deflated data.pkl may hold at most 1 MiB plus this many times its deflated bytes. torch.save stores it;
   * re-zipped, a state dict's pickle deflates ~2.3x (the test fixtures) to ~31x (1,680 tensors pickled without
   * the memo). Before, a 117 KB file inflated a 60 MB data.pkl (the zip's 64 MiB + 32x allowance), 250 MB peak.
   */
  pickleDeflateRatio: 64,
  /** Dict entries walked while flattening nested dicts. */
  names: 4_000_000,
  /**
   * Bytes that strided views may copy beyond the file's size. A real checkpoint's non-contiguous view (a
   * transposed weight) copies at most its storage, which is in the file; only repeated elements (stride 0,
   * overlapping strides) make more. Was 256 MiB: a 398-byte file made 404 MB.
   */
  copyBytes: 16 * 2 ** 20,
  /** Characters of a flattened tensor name (as the pickle's `maxKeyChars`: V8 hashes longer strings by length alone). */
  nameChars: 8192,
};

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
    if (!pkl) throw new InputError(`${path}: not a torch.save checkpoint: the zip archive has no <archive>/data.pkl entry`);
    const prefix = pkl.slice(0, pkl.length - 'data.pkl'.length);

    let bigEndian = false;
    if (zip.has(`${prefix}byteorder`)) {
      const order = new TextDecoder().decode(await zip.read(`${prefix}byteorder`, { maxSize: 64 })).trim();
      if (order !== 'little' && order !== 'big')
        throw new InputError(`${path}: ${prefix}byteorder must be "little" or "big", got ${JSON.stringify(order)}`);
      bigEndian = order === 'big';
    }

    const fileBytes = (await fh.stat()).size;
    const pklBytes = await zip.read(pkl, {
      maxSize: PTH_LIMITS.pickleBytes,
      maxDeflateRatio: PTH_LIMITS.pickleDeflateRatio,
      why: 'torch.save stores data.pkl; a state dict pickle deflates about 3-30x',
    });
    const root = new Unpickler(path, pklBytes, fileBytes).load();
    const found: [string, TensorSpec][] = [];
    if (root instanceof TensorSpec) throw new InputError(`${path}: holds a single tensor, expected a dict of tensors (a state dict)`);
    if (!(root instanceof PyDict))
      throw new InputError(`${path}: top-level object is ${describe(root)}, expected a dict of tensors (a state dict)`);
    collectTensors(path, root, '', found, new Set(), { left: PTH_LIMITS.names });
    if (found.length === 0) throw new InputError(`${path}: holds no tensors`);
    const seen = new Set<string>();
    for (const [name] of found) {
      if (seen.has(name)) throw new InputError(`${path}: two tensors flatten to the same name "${name}"`);
      seen.add(name);
    }

    // Load each storage once; tensors that cover a whole storage use its bytes without a copy.
    const storages = new Map<string, Uint8Array>();
    const copies = { left: PTH_LIMITS.copyBytes + fileBytes };
    const out: [string, HostTensor][] = [];
    for (const [name, spec] of found) {
      const s = spec.storage;
      let bytes = storages.get(s.key);
      if (!bytes) {
        const entry = `${prefix}data/${s.key}`;
        if (!zip.has(entry)) throw new InputError(`${path}: tensor "${name}": storage entry ${entry} is missing from the archive`);
        const need = s.numel * DTYPE_SIZE[s.dtype];
        const declared = zip.sizeOf(entry);
        if (declared !== need)
          throw new InputError(
            `${path}: tensor "${name}": storage ${entry} holds ${declared} bytes, expected ${s.numel} x ${s.dtype} = ${need}`,
          );
        bytes = await zip.read(entry, { expectedSize: need, why: `tensor "${name}" (${s.numel} x ${s.dtype})` });
        if (bigEndian) bytes = swapBytes(bytes, DTYPE_SIZE[s.dtype]);
        storages.set(s.key, bytes);
      }
      out.push([name, materialize(path, name, spec, bytes, copies)]);
    }
    return Object.fromEntries(out); // own properties even for a name like "__proto__"
  } finally {
    await fh.close();
  }
}

/**
 * Walks nested dicts collecting tensors under dotted names; cycles and other values are skipped. Names come
 * from string keys, and integer ones (an optimizer's `state` is keyed by parameter index: `optimizer.state.0.exp_avg`).
 * A key of any other type (a tuple, None, a float...) names nothing: its entry is skipped if it is neither a tensor
 * nor a dict, like any other non-tensor value, and refused otherwise (its tensors would be lost, and torch's own
 * `load_state_dict` would not match such a key to a parameter either). Keys are never stringified as objects.
 */
function collectTensors(
  path: string,
  dict: PyDict,
  prefix: string,
  out: [string, TensorSpec][],
  open: Set<PyDict>,
  budget: { left: number },
): void {
  open.add(dict);
  for (const [key, value] of dict.map) {
    if (--budget.left < 0)
      throw new InputError(`${path}: more than ${PTH_LIMITS.names} names in its nested dicts (the same dicts reached over and over?)`);
    const holds = value instanceof TensorSpec || value instanceof PyDict;
    let part: string;
    if (typeof key === 'string') part = key;
    else if ((typeof key === 'number' && Number.isInteger(key)) || typeof key === 'bigint') part = String(key);
    else if (!holds) continue;
    else
      throw new InputError(
        `${path}: the dict ${prefix ? `"${shorten(prefix.slice(0, -1))}"` : 'at the top level'} has a key that is ${describe(key)} over ${describe(value)}; tensor names are made from string (or integer) keys only, as in a state dict`,
      );
    if (prefix.length + part.length > PTH_LIMITS.nameChars)
      throw new InputError(
        `${path}: tensor name "${shorten(prefix + part)}" is longer than ${PTH_LIMITS.nameChars} characters (real names take under 300): corrupt or hostile`,
      );
    const name = prefix + part;
    if (value instanceof TensorSpec) out.push([name, value]);
    else if (value instanceof PyDict && !open.has(value) && open.size < 64) collectTensors(path, value, name + '.', out, open, budget);
  }
  open.delete(dict);
}

/** A name cut to 80 characters for an error. */
const shorten = (s: string): string => (s.length > 80 ? `${s.slice(0, 77)}...` : s);
