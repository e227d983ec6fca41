/** @vitreg/coordinator: not written yet; see README.md. */
export const name = '@vitreg/coordinator';
export const version = '0.1.0';
