/** @vitreg/worker: one GPU's process of a vitreg cluster job; see README.md. */
export { runWorker, WorkerAgent, type WorkerOptions, type WorkerResult } from './agent.js';
export { ringAllReduce, ringBroadcast, DEFAULT_BUCKET_BYTES, type RingIO, type RingOptions } from './ring.js';
export { Inbox, FrameParser, encodeHeader, ProtocolError, DEFAULT_CHUNK_BYTES, HEADER_BYTES, type Frame, type FrameHeader, type OutLink } from './frames.js';
export { connectTcpLink, TcpOutLink, GrpcOutLink, encodeHello, readHello, linkMac } from './links.js';
export { launchInfo, expandHostlist, selectDevice, DEFAULT_PORT, type LaunchInfo } from './env.js';
export { encodeState, decodeState, GrpcRingSync } from './thread.js';
export { runLocalJob, type LocalJobOptions, type LocalJobResult } from './local.js';
