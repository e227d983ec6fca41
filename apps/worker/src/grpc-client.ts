/**
 * What a worker's gRPC clients share (its link to the coordinator, its links to ring successors):
 * channel options, credentials, the job's call metadata, deadlines.
 */
import * as grpc from '@grpc/grpc-js';
import { METADATA_JOB, METADATA_TOKEN } from '@vitreg/proto';
import type { TlsFiles } from './links.js';

/** Metadata of a PushChunks stream: `<nonce hex>:<HMAC hex>` from OpenLink (see the peer server's link proof). */
export const METADATA_LINK = 'x-vitreg-link';

/** Explicit message limits, keepalive pings, and a quick reconnect backoff. */
export const CHANNEL_OPTIONS: grpc.ChannelOptions = {
  'grpc.max_receive_message_length': 8 << 20,
  'grpc.max_send_message_length': 8 << 20,
  'grpc.keepalive_time_ms': 10_000,
  'grpc.keepalive_timeout_ms': 5_000,
  'grpc.keepalive_permit_without_calls': 1,
  'grpc.initial_reconnect_backoff_ms': 200,
  'grpc.max_reconnect_backoff_ms': 2_000,
};

/**
 * CHANNEL_OPTIONS whose keepalive ping may wait `timeoutMs` (at least 5 s) for its answer. A ping goes
 * unanswered while the other process's event loop is busy, which on a loaded machine (a host's cores
 * shared with its training threads and other jobs) lasts seconds; grpc-js then closes the connection and
 * every call on it, a coordinator's membership watch included, which removes the worker. So no keepalive
 * gives up sooner than the job's own limit for a silent peer (the coordinator timeout, a link's timeout).
 */
export function channelOptions(timeoutMs: number): grpc.ChannelOptions {
  return { ...CHANNEL_OPTIONS, 'grpc.keepalive_timeout_ms': Math.max(5_000, Math.round(timeoutMs)) };
}

/** TLS credentials with the job's certificates (the peers' names are not checked: they are addresses), or none. */
export function clientCredentials(t: TlsFiles | undefined): grpc.ChannelCredentials {
  if (!t) return grpc.credentials.createInsecure();
  return grpc.credentials.createSsl(t.ca ?? null, t.key, t.cert, { checkServerIdentity: () => undefined });
}

/** The job's token and id, as every call carries them. */
export function jobMetadata(token: string, jobId: string): grpc.Metadata {
  const m = new grpc.Metadata();
  m.set(METADATA_TOKEN, token);
  m.set(METADATA_JOB, jobId);
  return m;
}

export function deadlineIn(ms: number): Date {
  return new Date(Date.now() + ms);
}
