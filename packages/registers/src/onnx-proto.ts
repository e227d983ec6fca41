/**
 * The part of ONNX's protobuf schema (onnx/onnx.proto, IR version 8) that an exported ViT uses, with the
 * official field numbers, encoded with protobufjs. Also a reader of a model file's top-level metadata that
 * skips the graph without decoding it (cheap on multi-gigabyte files).
 */
import { open } from 'node:fs/promises';
import protobuf from 'protobufjs';

/** Field numbers as in onnx/onnx.proto; fields the exporter never writes are left out. */
const SCHEMA = `
syntax = "proto2";
package onnx;
message StringStringEntryProto { optional string key = 1; optional string value = 2; }
message OperatorSetIdProto { optional string domain = 1; optional int64 version = 2; }
message AttributeProto {
  optional string name = 1; optional float f = 2; optional int64 i = 3; optional bytes s = 4;
  optional TensorProto t = 5; repeated float floats = 7; repeated int64 ints = 8; optional int32 type = 20;
}
message TensorProto {
  repeated int64 dims = 1; optional int32 data_type = 2; optional string name = 8; optional bytes raw_data = 9;
  repeated StringStringEntryProto external_data = 13; optional int32 data_location = 14;
}
message TensorShapeProto {
  message Dimension { optional int64 dim_value = 1; optional string dim_param = 2; }
  repeated Dimension dim = 1;
}
message TypeProto {
  message Tensor { optional int32 elem_type = 1; optional TensorShapeProto shape = 2; }
  optional Tensor tensor_type = 1;
}
message ValueInfoProto { optional string name = 1; optional TypeProto type = 2; }
message NodeProto {
  repeated string input = 1; repeated string output = 2; optional string name = 3; optional string op_type = 4;
  repeated AttributeProto attribute = 5; optional string domain = 7;
}
message GraphProto {
  repeated NodeProto node = 1; optional string name = 2; repeated TensorProto initializer = 5;
  repeated ValueInfoProto input = 11; repeated ValueInfoProto output = 12;
}
message ModelProto {
  optional int64 ir_version = 1; optional string producer_name = 2; optional string producer_version = 3;
  optional string doc_string = 6; optional GraphProto graph = 7; repeated OperatorSetIdProto opset_import = 8;
  repeated StringStringEntryProto metadata_props = 14;
}
`;

/** TensorProto.DataType values used here. */
export const ONNX_DTYPE = { FLOAT: 1, INT64: 7, FLOAT16: 10 } as const;
/** AttributeProto.AttributeType values used here. */
export const ONNX_ATTR = { FLOAT: 1, INT: 2, STRING: 3, TENSOR: 4, FLOATS: 6, INTS: 7 } as const;

let root: protobuf.Root | undefined;
function modelType(): protobuf.Type {
  root ??= protobuf.parse(SCHEMA, { keepCase: true }).root;
  return root.lookupType('onnx.ModelProto');
}

/** Plain-object ModelProto as protobufjs takes it (field names as in onnx.proto). */
export type ModelProtoObject = Record<string, unknown>;

/** Serialises a ModelProto object. Throws if the message would exceed protobuf's 2 GiB limit. */
export function encodeModel(model: ModelProtoObject): Uint8Array {
  const type = modelType();
  const err = type.verify(model);
  if (err) throw new Error(`ONNX export: invalid ModelProto: ${err}`);
  return type.encode(type.fromObject(model)).finish();
}

/** Decodes a serialised ModelProto to a plain object (for tests and inspection; not for huge files). */
export function decodeModel(bytes: Uint8Array): ModelProtoObject {
  const type = modelType();
  return type.toObject(type.decode(bytes), { longs: Number, bytes: Uint8Array, defaults: false }) as ModelProtoObject;
}

/** Top-level fields of a model file that identify it: producer and metadata_props. */
export interface OnnxFileInfo {
  producer: string;
  metadata: Record<string, string>;
}

/**
 * Reads producer_name and metadata_props of an .onnx file by walking its top-level protobuf fields and
 * skipping the others (the graph) by their lengths. Throws naming the file when it is not a protobuf
 * ModelProto (a truncated, corrupt or foreign file).
 */
export async function readOnnxInfo(path: string): Promise<OnnxFileInfo> {
  const fh = await open(path, 'r');
  try {
    const size = (await fh.stat()).size;
    const bad = (why: string) => new Error(`${path}: not an ONNX model file (${why})`);
    if (size === 0) throw bad('empty file');
    const head = Buffer.alloc(20);
    const info: OnnxFileInfo = { producer: '', metadata: {} };
    let pos = 0;
    let seenGraph = false;
    while (pos < size) {
      const { bytesRead } = await fh.read(head, 0, head.length, pos);
      let p = 0;
      const varint = (): number => {
        let v = 0;
        for (let shift = 0; shift < 64; shift += 7) {
          if (p >= bytesRead) throw bad(`truncated at byte ${pos + p}`);
          const b = head[p++]!;
          v += (b & 0x7f) * 2 ** shift;
          if (b < 0x80) return v;
        }
        throw bad(`bad varint at byte ${pos}`);
      };
      const tag = varint();
      const field = Math.floor(tag / 8);
      const wire = tag & 7;
      if (field < 1 || field > 25) throw bad(`unexpected field ${field} at byte ${pos}`);
      let len: number;
      if (wire === 0) len = (varint(), 0);
      else if (wire === 2) len = varint();
      else throw bad(`unexpected wire type ${wire} of field ${field} at byte ${pos}`);
      const start = pos + p;
      if (start + len > size) throw bad(`field ${field} runs past the end of the file (truncated?)`);
      if (field === 7) seenGraph = true;
      if (wire === 2 && (field === 2 || field === 14)) {
        const body = Buffer.alloc(len);
        await fh.read(body, 0, len, start);
        if (field === 2) info.producer = body.toString('utf8');
        else {
          const e = protobuf.Reader.create(body);
          let key = '';
          let value = '';
          try {
            while (e.pos < e.len) {
              const t = e.uint32();
              if (t >>> 3 === 1) key = e.string();
              else if (t >>> 3 === 2) value = e.string();
              else e.skipType(t & 7);
            }
          } catch (err) {
            throw bad(`bad metadata_props entry at byte ${start}: ${(err as Error).message}`);
          }
          info.metadata[key] = value;
        }
      }
      pos = start + len;
    }
    if (!seenGraph) throw bad('no graph');
    return info;
  } finally {
    await fh.close();
  }
}
