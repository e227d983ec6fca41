/** @vitreg/worker: one GPU's process of a vitreg cluster job, its local launcher and its data plane; see README.md. */
export { runWorker } from './agent.js';
export type { WorkerOptions, WorkerResult } from './agent.js';
export { runLocalJob } from './local.js';
export type { LocalJobOptions, LocalJobResult } from './local.js';
export { launchInfo, expandHostlist, selectDevice, DEFAULT_PORT } from './env.js';
export type { LaunchInfo } from './env.js';
export { ringAllReduce, ringBroadcast, DEFAULT_BUCKET_BYTES } from './ring.js';
export type { RingIO, RingOptions, Wire } from './ring.js';
export { Inbox, FrameParser, alignedCopy, ProtocolError, CollectiveTimeout, DEFAULT_CHUNK_BYTES } from './frames.js';
export type { Frame, FrameHeader, OutLink } from './frames.js';
export { connectTcpLink, readHello, encodeHello, linkMac, linkLiveness, LinkDown, TcpOutLink, GrpcOutLink } from './links.js';
export type { Hello, Liveness, TlsFiles } from './links.js';
export { acceptTcpLink } from './incoming-link.js';
export type { IncomingLinkOptions } from './incoming-link.js';
export { GrpcRingSync } from './ring-sync.js';
export type { AgentToThread, ThreadToAgent } from './messages.js';
