/** The error that ends a worker process (it exits non-zero so that its launcher can restart the job). */
export class Fatal extends Error {}
