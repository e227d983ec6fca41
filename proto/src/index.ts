/** @vitreg/proto: not written yet; see README.md. */
export const name = '@vitreg/proto';
export const version = '0.1.0';
