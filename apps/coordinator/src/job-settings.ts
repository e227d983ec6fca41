/**
 * The vocabulary of a coordinator's job state: its settings (defaults filled in, checked), how a job
 * ends, why a request is refused, and where memberships go. No transport, no state.
 */
import type { Membership } from '@vitreg/proto';
/** Why a request was refused, named as the gRPC status the coordinator answers with. */
export type RefusalCode =
  | 'UNAUTHENTICATED'
  | 'PERMISSION_DENIED'
  | 'FAILED_PRECONDITION'
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'RESOURCE_EXHAUSTED'
  | 'INTERNAL';

/** A refused request: it changed nothing; `message` says why, naming the field or worker. */
export class Refusal extends Error {
  constructor(
    readonly code: RefusalCode,
    message: string,
  ) {
    super(message);
    this.name = 'Refusal';
  }
}

export interface JobSettings {
  jobId: string;
  minWorkers: number;
  maxWorkers: number;
  /** Rendezvous: start with >= minWorkers once the caller closes the join window after this long (default 60000). */
  joinTimeoutMs: number;
  /** Told to workers in the join reply (default 1000). */
  heartbeatMs: number;
  /** A worker with no sign of life for this long is removed by `checkHeartbeats` (default 30000). */
  workerTimeoutMs: number;
  /** Data plane of the job (default 'tcp'), sent in every Membership. */
  transport: 'tcp' | 'grpc';
}

export interface JobStateOptions extends Pick<JobSettings, 'jobId' | 'minWorkers' | 'maxWorkers'> {
  joinTimeoutMs?: number;
  heartbeatMs?: number;
  workerTimeoutMs?: number;
  transport?: 'tcp' | 'grpc';
  /** The clock, in ms (default Date.now). */
  now?: () => number;
  /** One line per change (join, membership, removal, commit, checkpoint, finish). */
  log?: (line: string) => void;
  /** One record per event: join, membership, removed, commit, checkpoint, metrics, leave, finish. */
  event?: (name: string, fields: Record<string, unknown>) => void;
  /** Called once when the job ends (finished or stopped). */
  onFinish?: (outcome: JobOutcome) => void;
}

/** How a job ended: finished (every member left finished) or not (too few workers, shut down, interrupted). */
export interface JobOutcome {
  finished: boolean;
  reason: string;
  /** The job stopped on request (a stop signal) after this committed step, every worker with it. */
  interrupted?: { step: number; signal?: string };
}

/** Where a watching worker's memberships go (a gRPC server stream has these two methods). */
export interface MembershipSink {
  write(m: Membership): unknown;
  end(): unknown;
}

export type WorkerState = 'pending' | 'member' | 'removed' | 'left';

/** Checks the options and fills in the defaults; a bad value throws naming the option. */
export function resolveJobSettings(opts: JobStateOptions): JobSettings {
  const s: JobSettings = {
    jobId: opts.jobId,
    minWorkers: opts.minWorkers,
    maxWorkers: opts.maxWorkers,
    joinTimeoutMs: opts.joinTimeoutMs ?? 60_000,
    heartbeatMs: opts.heartbeatMs ?? 1000,
    workerTimeoutMs: opts.workerTimeoutMs ?? 30_000,
    transport: opts.transport ?? 'tcp',
  };
  const { minWorkers, maxWorkers, transport } = s;
  if (!s.jobId) throw new Error('jobId: must not be empty');
  if (!Number.isInteger(minWorkers) || minWorkers < 1) throw new Error(`minWorkers: expected an integer >= 1, got ${minWorkers}`);
  if (!Number.isInteger(maxWorkers) || maxWorkers < minWorkers)
    throw new Error(`maxWorkers: expected an integer >= minWorkers (${minWorkers}), got ${maxWorkers}`);
  if (transport !== 'tcp' && transport !== 'grpc') throw new Error(`transport: expected "tcp" or "grpc", got ${JSON.stringify(transport)}`);
  for (const k of ['joinTimeoutMs', 'heartbeatMs', 'workerTimeoutMs'] as const) {
    const v = s[k];
    if (!Number.isInteger(v) || v < 0) throw new Error(`${k}: expected an integer >= 0, got ${v}`);
  }
  return s;
}
