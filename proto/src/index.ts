/**
 * @vitreg/proto: the vitreg cluster protocol (vitreg/cluster/v1/cluster.proto) for TypeScript. The
 * message classes (`vitreg`) and the grpc-js services (./generated/services.ts) are generated at build
 * time by scripts/generate.mjs; see README.md.
 */
import { fileURLToPath } from 'node:url';

export { vitreg } from './generated/cluster.js';
// The generated services and message types (the .proto's messages, plain-object form), by name.
export { CoordinatorClient, CoordinatorService, PeerClient, PeerService } from './generated/services.js';
export type {
  Capabilities,
  CheckpointAck,
  CheckpointReport,
  Chunk,
  CoordinatorClientConstructor,
  CoordinatorHandlers,
  CoordinatorServiceDefinition,
  HeartbeatReply,
  HeartbeatRequest,
  JoinReply,
  JoinRequest,
  LeaveReply,
  LeaveRequest,
  LinkReply,
  LinkRequest,
  Member,
  Membership,
  MetricsAck,
  MetricsReport,
  PeerClientConstructor,
  PeerHandlers,
  PeerServiceDefinition,
  Plain,
  PlainValue,
  ProtoMethodDefinition,
  PushReply,
  RankValues,
  StepCommit,
  StepReport,
  WatchRequest,
} from './generated/services.js';

/** The protocol version a worker sends in JoinRequest.protocol_version. */
export const PROTOCOL_VERSION = 1;
/** The protobuf package of the cluster protocol. */
export const PROTO_PACKAGE = 'vitreg.cluster.v1';
/** Metadata key of the job's shared secret (compared in constant time). */
export const METADATA_TOKEN = 'x-vitreg-token';
/** Metadata key of the job id. */
export const METADATA_JOB = 'x-vitreg-job';
/** Absolute path of cluster.proto in the installed package (for tools such as @grpc/proto-loader or buf). */
export const PROTO_PATH = fileURLToPath(new URL('../vitreg/cluster/v1/cluster.proto', import.meta.url));
