/**
 * A worker's link to its job's coordinator: Join (retried while the coordinator is not up yet), the
 * heartbeats, the membership watch (reopened when it breaks), the step commit, checkpoint records and
 * Leave, each with a deadline; and the watchdog that gives up on a coordinator silent for too long
 * (time this process itself was held up does not count: the coordinator's answers wait unread then).
 */
import * as grpc from '@grpc/grpc-js';
import { CoordinatorClient, PROTOCOL_VERSION, type Capabilities, type Membership, type RankValues, type StepCommit } from '@vitreg/proto';
import type { TlsFiles } from './links.js';
import { channelOptions, clientCredentials, deadlineIn, jobMetadata } from './grpc-client.js';
import { Fatal } from './fatal.js';

export interface CoordinatorLinkOptions {
  /** host:port of the coordinator. */
  coordinator: string;
  token: string;
  jobId: string;
  tls?: TlsFiles;
  /** No answer from the coordinator for this long: `fatal`. */
  coordinatorTimeoutMs: number;
}

/** What the link tells the worker, and asks it. */
export interface CoordinatorLinkEvents {
  /** True once the worker finished or failed: nothing is retried any more. */
  over(): boolean;
  /** What a heartbeat reports: the epoch the worker is in, the step it reached, a ring neighbour it cannot reach ('' none). */
  progress(): { epoch: number; step: number; unreachablePeer?: string };
  membership(m: Membership): void;
  /** A heartbeat's answer says this worker is no member of the job. */
  notMember(): void;
  /** The worker must end (refused, removed, the coordinator lost, a membership it cannot follow). */
  fatal(err: Error): void;
}

/** What a worker tells the coordinator about itself when it joins. */
export interface JoinInfo {
  name: string;
  launcherRank: number;
  peerAddress: string;
  capabilities: Capabilities;
  configJson: string;
}

type Unary<Req, Res> = (req: Req, md: grpc.Metadata, o: grpc.CallOptions, cb: (e: grpc.ServiceError | null, v: Res) => void) => void;

export class CoordinatorLink {
  /** The job's call metadata (token, job id). */
  readonly metadata: grpc.Metadata;
  workerId = '';
  heartbeatMs = 1000;
  workerTimeoutMs = 30_000;
  private readonly client: CoordinatorClient;
  private lastContact = Date.now();
  private timers: NodeJS.Timeout[] = [];
  private watch: grpc.ClientReadableStream<Membership> | null = null;

  constructor(
    private readonly o: CoordinatorLinkOptions,
    private readonly events: CoordinatorLinkEvents,
  ) {
    this.metadata = jobMetadata(o.token, o.jobId);
    // A keepalive that gave up before the watchdog would drop the watch stream, and the coordinator removes a worker whose watch ends.
    this.client = new CoordinatorClient(o.coordinator, clientCredentials(o.tls), channelOptions(o.coordinatorTimeoutMs));
  }

  private unary<Req, Res>(method: string, req: Req, timeoutMs: number): Promise<Res> {
    return new Promise((resolve, reject) => {
      const fn = (this.client as unknown as Record<string, Unary<Req, Res>>)[method]!;
      fn.call(this.client, req, this.metadata, { deadline: deadlineIn(timeoutMs) }, (err, value) => {
        if (err) reject(err);
        else {
          this.lastContact = Date.now();
          resolve(value);
        }
      });
    });
  }

  /** Joins the job; retries while the coordinator is unreachable, up to coordinatorTimeoutMs. A refusal is Fatal. */
  async join(info: JoinInfo): Promise<void> {
    const start = Date.now();
    for (;;) {
      try {
        const reply = await this.unary<object, { workerId: string; heartbeatMs: number; workerTimeoutMs: number }>(
          'join',
          { jobId: this.o.jobId, protocolVersion: PROTOCOL_VERSION, ...info },
          10_000,
        );
        this.workerId = reply.workerId;
        this.heartbeatMs = Math.max(100, reply.heartbeatMs || 1000);
        this.workerTimeoutMs = reply.workerTimeoutMs || 30_000;
        return;
      } catch (err) {
        const e = err as grpc.ServiceError;
        const waited = Date.now() - start;
        const down = e.code === grpc.status.UNAVAILABLE || e.code === grpc.status.DEADLINE_EXCEEDED;
        if (down && waited < this.o.coordinatorTimeoutMs) {
          await new Promise((r) => setTimeout(r, 500));
          continue;
        }
        const why =
          e.code === grpc.status.UNAVAILABLE
            ? `cannot reach it for ${waited} ms (${e.details}; is it running, and with TLS on both sides or neither?)`
            : e.details;
        throw new Fatal(`coordinator ${this.o.coordinator} refused to admit this worker: ${grpc.status[e.code] ?? e.code}: ${why}`);
      }
    }
  }

  /** After join: the membership watch, a heartbeat every heartbeatMs, and the watchdog. */
  start(): void {
    this.openWatch();
    this.timers.push(setInterval(() => this.heartbeat(), this.heartbeatMs));
    let tick = Date.now();
    this.timers.push(
      setInterval(() => {
        const now = Date.now();
        // Time this process itself was held up (a long stall on a loaded host, SIGSTOP) is not the
        // coordinator's silence: what the coordinator sent meanwhile waits unread behind this timer.
        const late = now - tick - 250;
        tick = now;
        if (late > 1000) this.lastContact = Math.min(now, this.lastContact + late);
        const silent = now - this.lastContact;
        const limit = this.o.coordinatorTimeoutMs;
        if (silent > limit)
          this.events.fatal(
            new Fatal(
              `lost the coordinator at ${this.o.coordinator}: no answer for ${silent} ms (--coordinator-timeout-ms ${limit}); ` +
                'exiting so the launcher can restart the job, which resumes from the last checkpoint',
            ),
          );
      }, 250),
    );
  }

  private heartbeat(): void {
    if (!this.workerId || this.events.over()) return;
    const { epoch, step, unreachablePeer = '' } = this.events.progress();
    const timeoutMs = Math.max(2000, this.heartbeatMs * 3);
    this.unary<object, { epoch: number; member: boolean }>(
      'heartbeat',
      { workerId: this.workerId, epoch, step, unreachablePeer },
      timeoutMs,
    )
      .then((r) => {
        if (!r.member) this.events.notMember();
      })
      .catch((err: grpc.ServiceError) => {
        if (err.code === grpc.status.NOT_FOUND || err.code === grpc.status.FAILED_PRECONDITION)
          this.events.fatal(new Fatal(`the coordinator no longer knows this worker: ${err.details}`));
      });
  }

  private openWatch(): void {
    const call = this.client.watchMembership({ workerId: this.workerId }, this.metadata);
    this.watch = call;
    call.on('data', (m: Membership) => {
      this.lastContact = Date.now();
      try {
        this.events.membership(m);
      } catch (err) {
        this.events.fatal(err as Error);
      }
    });
    call.on('error', (err: grpc.ServiceError) => {
      if (this.events.over() || err.code === grpc.status.CANCELLED) return;
      if (err.code === grpc.status.FAILED_PRECONDITION || err.code === grpc.status.NOT_FOUND) {
        this.events.fatal(new Fatal(`the coordinator ended this worker's membership: ${err.details}`));
        return;
      }
      // The coordinator may be restarting or gone: retry; the watchdog ends this worker if it stays away.
      setTimeout(() => {
        if (!this.events.over()) this.openWatch();
      }, 500);
    });
  }

  /**
   * The step barrier: resolves to the coordinator's answer (committed, or not because the membership
   * changed first). Retried while the coordinator is unreachable (the watchdog gives up on it); any
   * other failure is Fatal.
   */
  async commitStep(epoch: number, step: number, ranks: RankValues[]): Promise<StepCommit> {
    for (;;) {
      try {
        return await this.unary<object, StepCommit>('commitStep', { workerId: this.workerId, epoch, step, ranks }, 3_600_000);
      } catch (err) {
        // Unreachable: retry until the watchdog gives up on the coordinator (the step is not applied).
        if ((err as grpc.ServiceError).code === grpc.status.UNAVAILABLE && !this.events.over()) {
          await new Promise((r) => setTimeout(r, 300));
          continue;
        }
        throw new Fatal(`CommitStep of step ${step} failed: ${(err as grpc.ServiceError).details ?? (err as Error).message}`);
      }
    }
  }

  /** Tells the coordinator a checkpoint of `step` was written at `path`. */
  async commitCheckpoint(step: number, path: string): Promise<void> {
    await this.unary('commitCheckpoint', { workerId: this.workerId, step, path }, 10_000);
  }

  async leave(reason: string, finished: boolean): Promise<void> {
    await this.unary('leave', { workerId: this.workerId, reason, finished }, 10_000);
  }

  /** Stops the heartbeats, the watchdog and the watch (calls still work until close). */
  stop(): void {
    for (const t of this.timers) clearInterval(t);
    this.timers = [];
    this.watch?.cancel();
  }

  /** Closes the channel. */
  close(): void {
    this.client.close();
  }
}
