/** The first difference between two parsed JSON values, as a field path ("train.batch_size", "layers[2]"). */
export interface ConfigDifference {
  /** Dotted path of the first differing field; '' when the documents differ at the top. */
  path: string;
  /** The value in the document being checked, as JSON ('absent' when the field is missing). */
  here: string;
  /** The value in the reference document, as JSON ('absent' when the field is missing). */
  job: string;
}

const show = (v: unknown): string => (v === undefined ? 'absent' : JSON.stringify(v));
const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const key = (path: string, k: string): string =>
  /^[A-Za-z_$][\w$-]*$/.test(k) ? (path ? `${path}.${k}` : k) : `${path}[${JSON.stringify(k)}]`;

/**
 * Compares two parsed JSON documents: objects by key (in sorted key order, key order within an object
 * does not matter), arrays by position, everything else by value. Returns null when they are equal.
 */
export function firstDifference(here: unknown, job: unknown, path = ''): ConfigDifference | null {
  if (Array.isArray(here) && Array.isArray(job)) {
    const n = Math.max(here.length, job.length);
    for (let i = 0; i < n; i++) {
      const d = firstDifference(here[i], job[i], `${path}[${i}]`);
      if (d) return d;
    }
    return null;
  }
  if (isObject(here) && isObject(job)) {
    const keys = [...new Set([...Object.keys(here), ...Object.keys(job)])].sort();
    for (const k of keys) {
      const d = firstDifference(here[k], job[k], key(path, k));
      if (d) return d;
    }
    return null;
  }
  if (here === job) return null;
  return { path, here: show(here), job: show(job) };
}
