/**
 * The Coordinator gRPC service over a JobState: each handler checks the call's job token and job id,
 * hands the request to the job state, and translates its answer (a reply, a held reply, a membership
 * stream) or its Refusal (a status with the refusal's message, one log line and one `refused` event).
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import * as grpc from '@grpc/grpc-js';
import { METADATA_JOB, METADATA_TOKEN, type CoordinatorHandlers } from '@vitreg/proto';
import { Refusal } from './job-settings.js';
import type { JobState } from './job-state.js';
import type { LogLimiter } from './log-limit.js';

const sha256 = (b: Buffer | string): Buffer => createHash('sha256').update(b).digest();

/** The address of a call's peer, for log lines. */
export function peerOf(call: { getPeer(): string }): string {
  try {
    return call.getPeer();
  } catch {
    return 'unknown peer';
  }
}

export interface ServiceContext {
  job: JobState;
  /** The job's shared secret (compared in constant time through SHA-256 digests). */
  token: string;
  log: (line: string) => void;
  event: (name: string, fields: Record<string, unknown>) => void;
  /** Bounds the refusal lines (and their events) of a flood: at most so many of one RPC per window. */
  limiter?: LogLimiter;
}

/** The handlers of vitreg.cluster.v1.Coordinator for `job`. */
export function coordinatorHandlers(ctx: ServiceContext): CoordinatorHandlers {
  const { job, log, event } = ctx;
  const tokenDigest = sha256(ctx.token);
  const jobId = job.settings.jobId;

  const refuse = (rpc: string, call: { getPeer(): string }, who: string, err: Refusal): void => {
    const line = `refused ${rpc} from ${peerOf(call)}${who ? ` (${who})` : ''}: ${err.message}`;
    if (ctx.limiter && !ctx.limiter.line(`refused ${rpc} calls`, line)) return;
    if (!ctx.limiter) log(line);
    event('refused', { rpc, peer: peerOf(call), who: who || undefined, code: err.code, message: err.message });
  };

  /** Checks the job token (constant time) and job id of a call's metadata. */
  const authenticate = (metadata: grpc.Metadata): void => {
    const token = metadata.get(METADATA_TOKEN)[0];
    const given = sha256(token === undefined ? '' : typeof token === 'string' ? token : Buffer.from(token));
    if (token === undefined || !timingSafeEqual(given, tokenDigest)) throw new Refusal('UNAUTHENTICATED', 'wrong job token');
    const job = metadata.get(METADATA_JOB)[0];
    const jobText = job === undefined ? '' : job.toString();
    if (jobText !== jobId)
      throw new Refusal('PERMISSION_DENIED', `job id ${JSON.stringify(jobText)} is not this coordinator's job ${JSON.stringify(jobId)}`);
  };

  /** Wraps a unary handler: auth, refusals logged and sent as status errors, other errors as INTERNAL. */
  function unary<Req, Res>(
    rpc: string,
    who: (req: Req) => string,
    body: (req: Req, call: grpc.ServerUnaryCall<Req, Res>, reply: (r: Res) => void) => void,
  ): grpc.handleUnaryCall<Req, Res> {
    return (call, callback) => {
      let answered = false;
      const reply = (r: Res): void => {
        if (answered) return;
        answered = true;
        callback(null, r);
      };
      try {
        authenticate(call.metadata);
        body(call.request, call, reply);
      } catch (e) {
        answered = true;
        if (e instanceof Refusal) {
          refuse(rpc, call, who(call.request), e);
          callback({ code: grpc.status[e.code], details: e.message });
        } else {
          log(`internal error in ${rpc}: ${(e as Error).stack ?? e}`);
          callback({ code: grpc.status.INTERNAL, details: `coordinator error: ${(e as Error).message}` });
        }
      }
    };
  }

  const nameOf = <R extends { workerId: string }>(r: R): string => job.describe(r.workerId);

  return {
    join: unary(
      'Join',
      (r) => r.name,
      (req, call, reply) => job.join(req, peerOf(call), reply),
    ),

    heartbeat: unary('Heartbeat', nameOf, (req, _call, reply) => reply(job.heartbeat(req.workerId, req))),

    watchMembership: (call) => {
      const workerId = call.request?.workerId ?? '';
      let watching: boolean;
      try {
        authenticate(call.metadata);
        watching = job.watch(workerId, call);
      } catch (e) {
        const r = e instanceof Refusal ? e : new Refusal('INTERNAL', (e as Error).message);
        if (e instanceof Refusal) refuse('WatchMembership', call, job.describe(workerId), r);
        call.emit('error', { code: grpc.status[r.code], details: r.message });
        return;
      }
      if (!watching) return;
      let over = false;
      const gone = (how: string): void => {
        if (over) return;
        over = true;
        // Ended by the job (removed, stopped) or by the worker after Leave: the job state tells.
        job.watchEnded(workerId, call, how);
      };
      call.on('cancelled', () => gone('watch stream cancelled'));
      call.on('error', (e: Error) => gone(`watch stream error: ${e.message}`));
      call.on('close', () => gone('watch stream closed'));
    },

    commitStep: unary('CommitStep', nameOf, (req, call, reply) => {
      const withdraw = job.commitStep(req, reply);
      call.on('cancelled', withdraw);
    }),

    commitCheckpoint: unary('CommitCheckpoint', nameOf, (req, _call, reply) => reply(job.commitCheckpoint(req))),

    reportMetrics: unary('ReportMetrics', nameOf, (req, _call, reply) => {
      job.reportMetrics(req);
      reply({});
    }),

    leave: unary('Leave', nameOf, (req, _call, reply) => job.leave(req, () => reply({}))),
  };
}
