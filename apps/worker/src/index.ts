/** @vitreg/worker: not written yet; see README.md. */
export const name = '@vitreg/worker';
export const version = '0.1.0';
