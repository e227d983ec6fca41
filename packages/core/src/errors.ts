/**
 * The one error type that tells a caller "what you gave cannot be used" apart from a failure of the run
 * itself: an image or tensor the model cannot take, a results folder made with other settings, a file
 * made for another model. Its message names the file, tensor or field. The vitreg command prints it as a
 * usage error (one line, exit code 2); any other error (a failed write, a bug) is a failure (exit code 1).
 */

/** Bad input: the message names the file, tensor or field and what was expected. */
export class InputError extends Error {
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'InputError';
  }
}

/** `err` as an InputError with the same message (itself when it is one already). */
export function asInputError(err: unknown): InputError {
  if (err instanceof InputError) return err;
  return new InputError((err as Error)?.message ?? String(err), { cause: err });
}
