/** @vitreg/coordinator: the gRPC coordinator of a vitreg training job and its transport-free job state; see README.md. */
export { startCoordinator, SERVER_OPTIONS } from './coordinator.js';
export type { CoordinatorOptions, CoordinatorHandle } from './coordinator.js';
export { JobState } from './job-state.js';
export { Refusal, resolveJobSettings } from './job-settings.js';
export { LogLimiter } from './log-limit.js';
export { listenGuarded, HTTP2_PREFACE } from './guarded-listener.js';
export type { GuardOptions } from './guarded-listener.js';
export type { JobStateOptions, JobSettings, JobOutcome, MembershipSink, RefusalCode, WorkerState } from './job-settings.js';
