// Node.js client for the mps.snapshot.v1 gRPC API (self-hosted Alibaba Cloud MPS snapshot jobs).
//
// The .proto files are loaded at run time: the API from <repo>/protos (or MPS_SNAPSHOT_PROTOS),
// google.rpc.Status / ErrorInfo / BadRequest / RetryInfo from ./protos (copies of the
// googleapis files, used to decode the grpc-status-details-bin trailer).
//
// Requests are MPS JSON, as MPS takes them: element names ("Input", "SnapshotConfig", ...),
// scalars as strings ("Time": "1000", "IsKeepCellPic": "false"), nested objects as JSON text,
// id lists comma-separated. Proto field names ("snapshot_config") and lowerCamel names work too.
// Responses come back as MPS JSON too (the proto3 JSON form: element names, int64 as strings,
// timestamps as RFC 3339 text), so a job reads job.State, job.Images[0].Object.
//
// Failed calls reject with MpsApiError: err.code is the MPS code from google.rpc.ErrorInfo.reason.

import path from "node:path";
import { fileURLToPath } from "node:url";

import grpc from "@grpc/grpc-js";
import protoLoader from "@grpc/proto-loader";
import protobuf from "protobufjs";

const here = path.dirname(fileURLToPath(import.meta.url));

/** Where the API's .proto files are: <repo>/protos unless MPS_SNAPSHOT_PROTOS says otherwise. */
export const PROTOS_DIR = process.env.MPS_SNAPSHOT_PROTOS || path.resolve(here, "..", "..", "protos");
const RPC_PROTOS_DIR = path.join(here, "protos");
const API_FILES = ["mps/snapshot/v1/snapshot_service.proto", "mps/snapshot/v1/pipeline_service.proto"];
const PACKAGE = "mps.snapshot.v1";

/** Alibaba Cloud RPC common parameters: part of an MPS call, not of the request body. */
export const COMMON_PARAMETERS = new Set([
  "Action", "Version", "Format", "RegionId", "AccessKeyId", "Signature", "SignatureMethod",
  "SignatureVersion", "SignatureNonce", "Timestamp", "SecurityToken", "OwnerId", "OwnerAccount",
  "ResourceOwnerId", "ResourceOwnerAccount",
]);

// proto-loader options: proto field names as keys (the converter below maps MPS names onto
// them), 64-bit integers and enums as strings, no defaults filled in (absent stays absent, as
// in proto3 JSON), no virtual oneof members for proto3 `optional` fields.
const LOADER_OPTIONS = { keepCase: true, longs: String, enums: String, defaults: false, oneofs: false };

function loadRoot(dir, files) {
  const root = new protobuf.Root();
  root.resolvePath = (_origin, target) => {
    // google/protobuf/*.proto are built into protobufjs; everything else is under dir.
    if (target.startsWith("google/protobuf/")) return target;
    return path.join(dir, target);
  };
  root.loadSync(files, { keepCase: true });
  root.resolveAll();
  return root;
}

/** The API's types (protobufjs reflection), for the MPS JSON converter. */
export const apiRoot = loadRoot(PROTOS_DIR, API_FILES);
/** google.rpc types, for decoding error details. */
export const rpcRoot = loadRoot(RPC_PROTOS_DIR, ["google/rpc/status.proto", "google/rpc/error_details.proto"]);

const packageDefinition = protoLoader.loadSync(API_FILES, { ...LOADER_OPTIONS, includeDirs: [PROTOS_DIR] });
const api = grpc.loadPackageDefinition(packageDefinition).mps.snapshot.v1;

// --- MPS JSON <-> message objects -------------------------------------------------------------

const INT32 = new Set(["int32", "uint32", "sint32", "fixed32", "sfixed32"]);
const INT64 = new Set(["int64", "uint64", "sint64", "fixed64", "sfixed64"]);
const FLOAT = new Set(["double", "float"]);

function lowerCamel(name) {
  return name.replace(/_([a-z0-9])/g, (_m, c) => c.toUpperCase());
}

function jsonName(field) {
  return (field.options && field.options.json_name) || lowerCamel(field.name);
}

function fieldFor(type, key) {
  for (const field of type.fieldsArray) {
    if (key === jsonName(field) || key === field.name || key === lowerCamel(field.name)) return field;
  }
  return null;
}

function lookup(typeOrName) {
  if (typeof typeOrName !== "string") return typeOrName;
  const name = typeOrName.includes(".") ? typeOrName : `${PACKAGE}.${typeOrName}`;
  return apiRoot.lookupType(name);
}

function bad(where, what) {
  return new TypeError(`${where}: ${what}`);
}

function toTimestamp(value, where) {
  if (value && typeof value === "object" && !(value instanceof Date)) return value; // {seconds, nanos}
  const date = value instanceof Date ? value : new Date(typeof value === "number" ? value : String(value));
  const ms = date.getTime();
  if (Number.isNaN(ms)) throw bad(where, `not a time: ${JSON.stringify(value)}`);
  return { seconds: String(Math.floor(ms / 1000)), nanos: (((ms % 1000) + 1000) % 1000) * 1e6 };
}

function scalarFromMps(field, value, where) {
  const t = field.type;
  if (field.resolvedType instanceof protobuf.Enum) {
    if (typeof value === "number" || typeof value === "string") return value;
    throw bad(where, `expected an enum name, got ${JSON.stringify(value)}`);
  }
  if (t === "bool") {
    if (typeof value === "boolean") return value;
    const text = String(value).trim().toLowerCase();
    if (text === "true" || text === "false") return text === "true";
    throw bad(where, `expected "true" or "false", got ${JSON.stringify(value)}`);
  }
  if (INT32.has(t) || INT64.has(t)) {
    const text = String(value).trim();
    if (!/^-?\d+$/.test(text)) throw bad(where, `expected an integer, got ${JSON.stringify(value)}`);
    return INT64.has(t) ? text : Number(text);
  }
  if (FLOAT.has(t)) {
    const number = typeof value === "number" ? value : Number(String(value).trim());
    if (!Number.isFinite(number) || String(value).trim() === "") {
      throw bad(where, `expected a number, got ${JSON.stringify(value)}`);
    }
    return number;
  }
  if (t === "string") {
    if (typeof value === "string") return value;
    if (typeof value === "number" || typeof value === "boolean") return String(value);
    throw bad(where, `expected a string, got ${JSON.stringify(value)}`);
  }
  return value; // bytes: a Buffer or base64 text
}

function valueFromMps(field, value, where) {
  if (field.resolvedType instanceof protobuf.Type) {
    const typeName = field.resolvedType.fullName.replace(/^\./, "");
    if (typeName === "google.protobuf.Timestamp") return toTimestamp(value, where);
    if (typeof value === "string") value = value.trim() ? JSON.parse(value) : {};
    return fromMps(field.resolvedType, value, where);
  }
  return scalarFromMps(field, value, where);
}

/**
 * An MPS JSON document (object or JSON text) as the plain object proto-loader serializes for
 * `type` (a message name such as "SubmitSnapshotJobRequest", or a protobufjs Type). Unknown
 * elements throw a TypeError, so typos are caught before the call.
 */
export function fromMps(type, doc, where) {
  type = lookup(type);
  where = where || type.name;
  if (typeof doc === "string") doc = JSON.parse(doc);
  if (doc === null || typeof doc !== "object" || Array.isArray(doc)) {
    throw bad(where, `expected an object, got ${JSON.stringify(doc)}`);
  }
  const out = {};
  for (const [key, raw] of Object.entries(doc)) {
    if (raw === null || raw === undefined) continue;
    const field = fieldFor(type, key);
    if (field === null) {
      if (where === type.name && COMMON_PARAMETERS.has(key)) continue; // top level only
      throw bad(`${where}.${key}`, `no such element in ${type.fullName.replace(/^\./, "")}`);
    }
    const at = `${where}.${jsonName(field)}`;
    if (field.repeated) {
      let value = raw;
      if (value && typeof value === "object" && !Array.isArray(value) && Object.keys(value).length === 1) {
        value = Object.values(value)[0]; // MPS's {"String": [...]} wrapper
      }
      if (typeof value === "string") {
        value = field.type === "string" ? value.split(",").map((s) => s.trim()).filter(Boolean) : JSON.parse(value);
      }
      if (!Array.isArray(value)) value = [value];
      out[field.name] = value.map((v, i) => valueFromMps(field, v, `${at}[${i}]`));
    } else {
      out[field.name] = valueFromMps(field, raw, at);
    }
  }
  return out;
}

function timestampText(ts) {
  // RFC 3339 in UTC with 0, 3, 6 or 9 fraction digits, as the proto3 JSON mapping writes it.
  const seconds = Number(ts.seconds || 0);
  const nanos = ts.nanos || 0;
  const base = new Date(seconds * 1000).toISOString().slice(0, 19);
  if (!nanos) return `${base}Z`;
  let fraction = String(nanos).padStart(9, "0");
  while (fraction.endsWith("000")) fraction = fraction.slice(0, -3);
  return `${base}.${fraction}Z`;
}

function valueToMps(field, value) {
  if (field.resolvedType instanceof protobuf.Type) {
    const typeName = field.resolvedType.fullName.replace(/^\./, "");
    if (typeName === "google.protobuf.Timestamp") return timestampText(value);
    return toMps(field.resolvedType, value);
  }
  return value;
}

/** A message object from proto-loader (proto field names) as MPS JSON (element names). */
export function toMps(type, message) {
  type = lookup(type);
  const out = {};
  for (const field of type.fieldsArray) {
    const value = message[field.name];
    if (value === undefined || value === null) continue;
    if (field.repeated) {
      if (value.length === 0) continue;
      out[jsonName(field)] = value.map((v) => valueToMps(field, v));
    } else {
      out[jsonName(field)] = valueToMps(field, value);
    }
  }
  return out;
}

// --- errors ------------------------------------------------------------------------------------

const STATUS_NAMES = Object.fromEntries(Object.entries(grpc.status).map(([name, number]) => [number, name]));

/** A failed call. `code` is the MPS error code (e.g. "InvalidParameter.ResourceNotFound"). */
export class MpsApiError extends Error {
  constructor({ code, message, grpcCode, requestId = "", jobId = "", violations = [], retryDelayMs = null, cause }) {
    super(`${code}: ${message}`, cause ? { cause } : undefined);
    this.name = "MpsApiError";
    /** The MPS error code, from google.rpc.ErrorInfo.reason. */
    this.code = code;
    /** The status message (says what to fix, ends with the request id). */
    this.details = message;
    /** The gRPC status as a number (grpc.status.NOT_FOUND = 5) and as its name. */
    this.grpcCode = grpcCode;
    this.grpcStatus = STATUS_NAMES[grpcCode] || String(grpcCode);
    this.requestId = requestId;
    /** The job recorded as Fail, for a failed synchronous snapshot. */
    this.jobId = jobId;
    /** google.rpc.BadRequest field violations: [{field, description}]. */
    this.violations = violations;
    /** google.rpc.RetryInfo's delay in milliseconds, or null. */
    this.retryDelayMs = retryDelayMs;
  }
}

const StatusType = rpcRoot.lookupType("google.rpc.Status");

/**
 * Decode a grpc-status-details-bin value (a serialized google.rpc.Status) into
 * {code, message, reason, domain, metadata, violations, retryDelayMs, details}.
 */
export function decodeStatusDetails(bytes) {
  const status = StatusType.decode(bytes);
  const out = {
    code: status.code,
    message: status.message,
    reason: "",
    domain: "",
    metadata: {},
    violations: [],
    retryDelayMs: null,
    details: [],
  };
  for (const any of status.details) {
    const typeName = any.type_url.slice(any.type_url.lastIndexOf("/") + 1);
    let type;
    try {
      type = rpcRoot.lookupType(typeName);
    } catch {
      out.details.push({ typeUrl: any.type_url, value: any.value });
      continue;
    }
    const detail = type.toObject(type.decode(any.value), { longs: String, enums: String, defaults: true });
    out.details.push({ typeUrl: any.type_url, ...detail });
    if (typeName === "google.rpc.ErrorInfo") {
      out.reason = detail.reason;
      out.domain = detail.domain;
      out.metadata = detail.metadata || {};
    } else if (typeName === "google.rpc.BadRequest") {
      for (const v of detail.field_violations || []) out.violations.push({ field: v.field, description: v.description });
    } else if (typeName === "google.rpc.RetryInfo" && detail.retry_delay) {
      out.retryDelayMs = Number(detail.retry_delay.seconds || 0) * 1000 + (detail.retry_delay.nanos || 0) / 1e6;
    }
  }
  return out;
}

/** A grpc-js error (a ServiceError) as an MpsApiError; other errors are returned unchanged. */
export function toMpsError(err) {
  if (!err || typeof err.code !== "number" || err instanceof MpsApiError) return err;
  const fallback = { [grpc.status.DEADLINE_EXCEEDED]: "SnapshotTimeOut", [grpc.status.UNAVAILABLE]: "ServiceUnavailable" };
  const fields = { code: fallback[err.code] || "InternalError", message: err.details || err.message, grpcCode: err.code, cause: err };
  if (err.metadata) {
    const requestId = err.metadata.get("x-request-id")[0];
    if (typeof requestId === "string") fields.requestId = requestId;
    const [raw] = err.metadata.get("grpc-status-details-bin");
    if (raw) {
      const rich = decodeStatusDetails(raw);
      if (rich.reason) fields.code = rich.reason;
      fields.requestId = rich.metadata.requestId || fields.requestId;
      fields.jobId = rich.metadata.jobId || "";
      fields.violations = rich.violations;
      fields.retryDelayMs = rich.retryDelayMs;
    }
  }
  return new MpsApiError(fields);
}

// --- the client ----------------------------------------------------------------------------------

/** Calls SnapshotService and PipelineService on one channel, in MPS JSON. */
export class MpsClient {
  /**
   * @param {string} target "host:port", e.g. "127.0.0.1:50051"
   * @param {{credentials?: grpc.ChannelCredentials, timeoutMs?: number}} [options]
   */
  constructor(target, { credentials = grpc.credentials.createInsecure(), timeoutMs = 30000 } = {}) {
    this.snapshots = new api.SnapshotService(target, credentials);
    this.pipelines = new api.PipelineService(target, credentials, { channelOverride: this.snapshots.getChannel() });
    this.timeoutMs = timeoutMs;
  }

  close() {
    this.snapshots.close();
  }

  /**
   * Any unary RPC: `service` "SnapshotService" or "PipelineService", `method` its RPC name,
   * `doc` the request in MPS JSON. Resolves to the response in MPS JSON.
   */
  call(service, method, doc = {}, { timeoutMs } = {}) {
    const rpc = apiRoot.lookupService(`${PACKAGE}.${service}`).methods[method];
    if (!rpc || rpc.responseStream) throw new TypeError(`${service}.${method} is not a unary RPC`);
    const stub = service === "PipelineService" ? this.pipelines : this.snapshots;
    const request = fromMps(rpc.resolvedRequestType, doc);
    const deadline = Date.now() + (timeoutMs ?? this.timeoutMs);
    return new Promise((resolve, reject) => {
      stub[method](request, { deadline }, (err, response) => {
        if (err) reject(toMpsError(err));
        else resolve(toMps(rpc.resolvedResponseType, response));
      });
    });
  }

  /** SubmitSnapshotJob with an MPS JSON request; resolves to {RequestId, SnapshotJob}. */
  submit(doc, options) {
    return this.call("SnapshotService", "SubmitSnapshotJob", doc, options);
  }

  /** One synchronous snapshot; resolves to the finished job ({State: "Success", Images: [...]}). */
  async snapshot({ bucket, object, outputBucket, outputObject, timeMs, location = "", width, height, frameType }, options) {
    const config = { OutputFile: { Bucket: outputBucket ?? bucket, Location: location, Object: outputObject } };
    if (timeMs !== undefined) config.Time = String(timeMs);
    if (width !== undefined) config.Width = String(width);
    if (height !== undefined) config.Height = String(height);
    if (frameType) config.FrameType = frameType;
    const doc = { Input: { Bucket: bucket, Location: location, Object: object }, SnapshotConfig: config };
    return (await this.submit(doc, options)).SnapshotJob;
  }

  /** QuerySnapshotJobList: `query(["id1", "id2"])` or `query({State: "Success", MaximumPageSize: "10"})`. */
  query(idsOrFilter = {}, options) {
    const doc = Array.isArray(idsOrFilter) ? { SnapshotJobIds: idsOrFilter } : idsOrFilter;
    return this.call("SnapshotService", "QuerySnapshotJobList", doc, options);
  }

  /** CancelSnapshotJob; resolves to the job, now "Cancelled". */
  async cancel(jobId, options) {
    return (await this.call("SnapshotService", "CancelSnapshotJob", { SnapshotJobId: jobId }, options)).SnapshotJob;
  }

  /**
   * WatchSnapshotJob as an async iterator of events in MPS JSON
   * ({Kind: "KIND_INITIAL", SnapshotJob: {...}, Progress: {...}}), until the job ends.
   */
  async *watch(jobId, { timeoutMs } = {}) {
    const rpc = apiRoot.lookupService(`${PACKAGE}.SnapshotService`).methods.WatchSnapshotJob;
    const options = timeoutMs ? { deadline: Date.now() + timeoutMs } : {};
    const call = this.snapshots.WatchSnapshotJob({ snapshot_job_id: jobId }, options);
    try {
      for await (const event of call) yield toMps(rpc.resolvedResponseType, event);
    } catch (err) {
      throw toMpsError(err);
    } finally {
      call.cancel(); // no-op once the stream has ended; stops it if the caller broke out early
    }
  }

  /** Follows the job with WatchSnapshotJob until it ends; resolves to its final state. */
  async wait(jobId, { timeoutMs, onEvent } = {}) {
    let last = null;
    for await (const event of this.watch(jobId, { timeoutMs })) {
      if (onEvent) onEvent(event);
      last = event.SnapshotJob;
    }
    return last;
  }

  addPipeline(doc, options) {
    return this.call("PipelineService", "AddPipeline", doc, options);
  }

  updatePipeline(doc, options) {
    return this.call("PipelineService", "UpdatePipeline", doc, options);
  }

  queryPipelineList(ids, options) {
    return this.call("PipelineService", "QueryPipelineList", { PipelineIds: ids }, options);
  }

  searchPipeline(doc = {}, options) {
    return this.call("PipelineService", "SearchPipeline", doc, options);
  }

  deletePipeline(pipelineId, options) {
    return this.call("PipelineService", "DeletePipeline", { PipelineId: pipelineId }, options);
  }
}

export { grpc };
