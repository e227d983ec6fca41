/**
 * Admission: the checks a JoinRequest passes before a job admits the worker (protocol version, job
 * id, name, the job still running, threads, the job's data plane, a config equal to the job's, a name
 * no live worker holds, room below maxWorkers). Each failure is a Refusal naming what differs.
 */
import { firstDifference } from '@vitreg/core';
import { PROTOCOL_VERSION, type Capabilities, type JoinRequest } from '@vitreg/proto';
import { Refusal, type JobSettings } from './job-settings.js';

/** What admission needs to know of the job. */
export interface AdmissionContext {
  settings: JobSettings;
  /** The job has ended. */
  stopped: boolean;
  /** The config of the first admitted worker (null before the first). */
  config: { value: unknown } | null;
  /** Members and pending joiners. */
  live: readonly { id: string; name: string }[];
}

/** An admissible request, read: the threads it brings, its config (parsed), its capabilities. */
export interface Admitted {
  threads: number;
  config: unknown;
  capabilities: Capabilities | undefined;
}

/** Checks `req` against the job; throws a Refusal (changing nothing) when it may not join. */
export function checkJoin(req: JoinRequest, job: AdmissionContext): Admitted {
  const { jobId, transport, maxWorkers } = job.settings;
  if (req.protocolVersion !== PROTOCOL_VERSION)
    throw new Refusal('FAILED_PRECONDITION', `protocol version ${req.protocolVersion}; this coordinator speaks ${PROTOCOL_VERSION}`);
  if (req.jobId !== jobId)
    throw new Refusal('PERMISSION_DENIED', `job id ${JSON.stringify(req.jobId)} is not this coordinator's job ${JSON.stringify(jobId)}`);
  if (!req.name) throw new Refusal('INVALID_ARGUMENT', 'name: must not be empty');
  if (job.stopped) throw new Refusal('FAILED_PRECONDITION', 'the job has ended');
  // A request may arrive without its capabilities message (proto3: unset).
  const caps = req.capabilities as Capabilities | undefined;
  const threads = caps?.threads ?? 0;
  if (threads < 1) throw new Refusal('INVALID_ARGUMENT', `capabilities.threads must be >= 1, got ${threads}`);
  const transports = caps?.transports ?? [];
  if (!transports.includes(transport)) {
    const served = transports.length ? transports.map((t) => `"${t}"`).join(', ') : 'none';
    throw new Refusal('FAILED_PRECONDITION', `the job's data plane is "${transport}"; this worker serves ${served}`);
  }
  let config: unknown;
  try {
    config = JSON.parse(req.configJson);
  } catch (e) {
    throw new Refusal('INVALID_ARGUMENT', `config_json is not JSON: ${(e as Error).message}`);
  }
  if (job.config) {
    const d = firstDifference(config, job.config.value);
    if (d) {
      const what = d.path ? `field "${d.path}" differs` : 'the config differs';
      throw new Refusal('FAILED_PRECONDITION', `${what}: ${d.here} here, ${d.job} in the job`);
    }
  }
  const holder = job.live.find((w) => w.name === req.name);
  if (holder) throw new Refusal('ALREADY_EXISTS', `the name "${req.name}" is held by live worker ${holder.id}`);
  if (job.live.length >= maxWorkers)
    throw new Refusal('RESOURCE_EXHAUSTED', `the job is full: ${job.live.length} of --max-workers ${maxWorkers}`);
  return { threads, config, capabilities: caps };
}
