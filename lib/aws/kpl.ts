/**
 * The KPL aggregated record format (amazon-kinesis-producer/aggregation-format.md): many user records in
 * one Kinesis record, as the Kinesis Producer Library writes them and the KCL reads them.
 *
 *   0               4                  N          N+15
 *   +---+---+---+---+==================+---+...+---+
 *   |  MAGIC NUMBER | PROTOBUF MESSAGE |    MD5    |      magic = F3 89 9A C2, MD5 of the message
 *   +---+---+---+---+==================+---+...+---+
 *
 *   message AggregatedRecord {                    message Record {
 *     repeated string partition_key_table = 1;      required uint64 partition_key_index = 1;
 *     repeated string explicit_hash_key_table = 2;  optional uint64 explicit_hash_key_index = 2;
 *     repeated Record records = 3;                  required bytes data = 3;
 *   }                                               repeated Tag tags = 4;   // ignored
 *                                                 }
 *
 * Hand-written (proto2 wire format, ~150 lines) rather than the npm package `aws-kinesis-agg`: that one is
 * CommonJS with a callback/base64 API built for Lambda event records, its typings import `aws-sdk` v2 and
 * `aws-lambda` without depending on them, it pulls in async, lodash, agentkeepalive and minimist, and on
 * a bad aggregate it reports an error where the KCL delivers the record unchanged. Its output is used as
 * a golden fixture in kpl.test.ts instead.
 *
 * Like the KCL (AggregatorUtil), a payload is an aggregate only if it starts with the magic number, its
 * MD5 trailer matches and its message parses; anything else is an ordinary record, delivered unchanged.
 */
import { createHash } from 'node:crypto';
import { hashKey } from '../core/index.ts';

export const KPL_MAGIC: Uint8Array = Uint8Array.of(0xf3, 0x89, 0x9a, 0xc2);
const DIGEST_SIZE = 16;

/** One user record of an aggregate. */
export interface KplUserRecord {
  readonly partitionKey: string;
  /** Decimal 128-bit hash key that overrides the partition key's MD5 for routing. */
  readonly explicitHashKey?: string;
  readonly data: Uint8Array;
}

/** An aggregated Kinesis record ready for PutRecord(s). */
export interface KplAggregate {
  /** The first user record's partition key (the aggregate routes where its first user record does). */
  readonly partitionKey: string;
  readonly explicitHashKey?: string;
  readonly data: Uint8Array;
}

class InvalidAggregate extends Error {}

const utf8 = new TextDecoder('utf-8', { fatal: true });
const utf8Encoder = new TextEncoder();

/** A proto2 wire-format reader over buf[pos, end). */
class ProtoReader {
  constructor(
    private readonly buf: Uint8Array,
    public pos: number,
    private readonly end: number,
  ) {}

  get done(): boolean {
    return this.pos >= this.end;
  }

  /** A varint as a JS number; values above 2^53 are rejected (indices and lengths never are). */
  varint(): number {
    let result = 0;
    let scale = 1;
    for (let i = 0; i < 10; i++) {
      if (this.pos >= this.end) throw new InvalidAggregate('truncated varint');
      const byte = this.buf[this.pos++]!;
      result += (byte & 0x7f) * scale;
      if ((byte & 0x80) === 0) {
        if (result > Number.MAX_SAFE_INTEGER) throw new InvalidAggregate('varint too large');
        return result;
      }
      scale *= 128;
    }
    throw new InvalidAggregate('varint longer than 10 bytes');
  }

  bytes(): Uint8Array {
    const length = this.varint();
    const start = this.pos;
    if (length > this.end - start) throw new InvalidAggregate('length-delimited field overruns');
    this.pos = start + length;
    return this.buf.subarray(start, start + length);
  }

  /** A length-delimited field as a sub-reader over the same buffer. */
  message(): ProtoReader {
    const length = this.varint();
    const start = this.pos;
    if (length > this.end - start) throw new InvalidAggregate('embedded message overruns');
    this.pos = start + length;
    return new ProtoReader(this.buf, start, start + length);
  }

  string(): string {
    try {
      return utf8.decode(this.bytes());
    } catch (error) {
      if (error instanceof InvalidAggregate) throw error;
      throw new InvalidAggregate('string field is not UTF-8');
    }
  }

  skip(wireType: number): void {
    if (wireType === 0) this.varint();
    else if (wireType === 1) this.advance(8);
    else if (wireType === 2) this.bytes();
    else if (wireType === 5) this.advance(4);
    else throw new InvalidAggregate(`unsupported wire type ${wireType}`);
  }

  private advance(n: number): void {
    if (n > this.end - this.pos) throw new InvalidAggregate('truncated fixed-width field');
    this.pos += n;
  }
}

function tag(reader: ProtoReader): { field: number; wireType: number } {
  const key = reader.varint();
  const field = Math.floor(key / 8);
  if (field === 0) throw new InvalidAggregate('field number 0');
  return { field, wireType: key % 8 };
}

function expectWireType(actual: number, expected: number, what: string): void {
  if (actual !== expected)
    throw new InvalidAggregate(`${what} has wire type ${actual}, expected ${expected}`);
}

function startsWithMagic(payload: Uint8Array): boolean {
  return (
    payload.length >= KPL_MAGIC.length &&
    payload[0] === KPL_MAGIC[0] &&
    payload[1] === KPL_MAGIC[1] &&
    payload[2] === KPL_MAGIC[2] &&
    payload[3] === KPL_MAGIC[3]
  );
}

function md5(bytes: Uint8Array): Uint8Array {
  return createHash('md5').update(bytes).digest();
}

/** True when `payload` starts with the KPL magic number (it may still fail the checksum). */
export function hasKplMagic(payload: Uint8Array): boolean {
  return startsWithMagic(payload);
}

/**
 * The user records of a KPL aggregate, in order, their data as views into `payload`; `undefined` when
 * `payload` is not a valid aggregate (no magic, checksum mismatch, malformed protobuf, a key index
 * outside its table, an explicit hash key that is not a decimal integer): the KCL then delivers the
 * Kinesis record itself.
 */
export function deaggregate(payload: Uint8Array): KplUserRecord[] | undefined {
  if (!startsWithMagic(payload) || payload.length - KPL_MAGIC.length <= DIGEST_SIZE) return undefined;
  const messageEnd = payload.length - DIGEST_SIZE;
  const message = payload.subarray(KPL_MAGIC.length, messageEnd);
  const digest = md5(message);
  for (let i = 0; i < DIGEST_SIZE; i++) if (digest[i] !== payload[messageEnd + i]) return undefined;
  try {
    return decodeAggregatedRecord(new ProtoReader(payload, KPL_MAGIC.length, messageEnd));
  } catch (error) {
    if (error instanceof InvalidAggregate) return undefined;
    throw error;
  }
}

function decodeAggregatedRecord(reader: ProtoReader): KplUserRecord[] {
  const partitionKeys: string[] = [];
  const explicitHashKeys: string[] = [];
  const raw: { pk: number; ehk: number | undefined; data: Uint8Array }[] = [];
  while (!reader.done) {
    const { field, wireType } = tag(reader);
    if (field === 1) {
      expectWireType(wireType, 2, 'partition_key_table');
      partitionKeys.push(reader.string());
    } else if (field === 2) {
      expectWireType(wireType, 2, 'explicit_hash_key_table');
      const ehk = reader.string();
      if (!/^\d{1,39}$/.test(ehk)) throw new InvalidAggregate('explicit hash key is not a decimal integer');
      explicitHashKeys.push(ehk);
    } else if (field === 3) {
      expectWireType(wireType, 2, 'records');
      raw.push(decodeRecord(reader.message()));
    } else {
      reader.skip(wireType);
    }
  }
  return raw.map((r) => {
    const partitionKey = partitionKeys[r.pk];
    if (partitionKey === undefined) throw new InvalidAggregate('partition_key_index outside the table');
    if (r.ehk === undefined) return { partitionKey, data: r.data };
    const explicitHashKey = explicitHashKeys[r.ehk];
    if (explicitHashKey === undefined)
      throw new InvalidAggregate('explicit_hash_key_index outside the table');
    return { partitionKey, explicitHashKey, data: r.data };
  });
}

function decodeRecord(reader: ProtoReader): { pk: number; ehk: number | undefined; data: Uint8Array } {
  let pk: number | undefined;
  let ehk: number | undefined;
  let data: Uint8Array | undefined;
  while (!reader.done) {
    const { field, wireType } = tag(reader);
    if (field === 1) {
      expectWireType(wireType, 0, 'partition_key_index');
      pk = reader.varint();
    } else if (field === 2) {
      expectWireType(wireType, 0, 'explicit_hash_key_index');
      ehk = reader.varint();
    } else if (field === 3) {
      expectWireType(wireType, 2, 'data');
      data = reader.bytes();
    } else {
      reader.skip(wireType); // tags (4) and unknown fields
    }
  }
  if (pk === undefined || data === undefined) {
    throw new InvalidAggregate('a record lacks a required field (partition_key_index or data)');
  }
  return { pk, ehk, data };
}

/** The 128-bit hash key that routes a record: its explicit hash key, else the MD5 of its partition key. */
export function effectiveHashKey(record: {
  partitionKey: string;
  explicitHashKey?: string | undefined;
}): bigint {
  return record.explicitHashKey !== undefined ? BigInt(record.explicitHashKey) : hashKey(record.partitionKey);
}

// ---------------------------------------------------------------------------------------------
// Encoding (producers and tests)

function varintBytes(value: number): number[] {
  if (!Number.isSafeInteger(value) || value < 0) throw new RangeError(`varint out of range: ${value}`);
  const out: number[] = [];
  let v = value;
  while (v >= 0x80) {
    out.push((v % 0x80) | 0x80);
    v = Math.floor(v / 0x80);
  }
  out.push(v);
  return out;
}

class ProtoWriter {
  private readonly chunks: Uint8Array[] = [];
  private size = 0;

  varintField(field: number, value: number): void {
    this.push(Uint8Array.from([...varintBytes(field * 8), ...varintBytes(value)]));
  }

  bytesField(field: number, bytes: Uint8Array): void {
    this.push(Uint8Array.from([...varintBytes(field * 8 + 2), ...varintBytes(bytes.length)]));
    this.push(bytes);
  }

  finish(): Uint8Array {
    const out = new Uint8Array(this.size);
    let offset = 0;
    for (const c of this.chunks) {
      out.set(c, offset);
      offset += c.length;
    }
    return out;
  }

  private push(bytes: Uint8Array): void {
    this.chunks.push(bytes);
    this.size += bytes.length;
  }
}

export interface KplUserRecordInput {
  readonly partitionKey: string;
  readonly explicitHashKey?: string;
  readonly data: Uint8Array | string;
}

/**
 * Encodes user records as one KPL aggregate (magic, protobuf, MD5), with deduplicated key tables. The
 * aggregate takes the first record's partition key and explicit hash key, so it lands on that record's
 * shard; as with the KPL, every user record should map to that same shard (a consumer that filters by
 * the shard's hash-key range drops the aggregate otherwise). The caller keeps it under the Kinesis
 * record size limit (1 MiB for PutRecords by default).
 */
export function aggregate(records: readonly KplUserRecordInput[]): KplAggregate {
  const first = records[0];
  if (first === undefined) throw new RangeError('aggregate() needs at least one user record');
  const pkIndex = new Map<string, number>();
  const ehkIndex = new Map<string, number>();
  const body = new ProtoWriter();
  const encodedRecords: Uint8Array[] = [];
  for (const r of records) {
    let pk = pkIndex.get(r.partitionKey);
    if (pk === undefined) {
      pk = pkIndex.size;
      pkIndex.set(r.partitionKey, pk);
    }
    const rec = new ProtoWriter();
    rec.varintField(1, pk);
    if (r.explicitHashKey !== undefined) {
      let ehk = ehkIndex.get(r.explicitHashKey);
      if (ehk === undefined) {
        ehk = ehkIndex.size;
        ehkIndex.set(r.explicitHashKey, ehk);
      }
      rec.varintField(2, ehk);
    }
    rec.bytesField(3, typeof r.data === 'string' ? utf8Encoder.encode(r.data) : r.data);
    encodedRecords.push(rec.finish());
  }
  for (const key of pkIndex.keys()) body.bytesField(1, utf8Encoder.encode(key));
  for (const key of ehkIndex.keys()) body.bytesField(2, utf8Encoder.encode(key));
  for (const rec of encodedRecords) body.bytesField(3, rec);
  const message = body.finish();
  const data = new Uint8Array(KPL_MAGIC.length + message.length + DIGEST_SIZE);
  data.set(KPL_MAGIC, 0);
  data.set(message, KPL_MAGIC.length);
  data.set(md5(message), KPL_MAGIC.length + message.length);
  return {
    partitionKey: first.partitionKey,
    ...(first.explicitHashKey !== undefined ? { explicitHashKey: first.explicitHashKey } : {}),
    data,
  };
}
