/**
 * `floe simulate`: runs a pipeline in memory over an NDJSON script of records and control
 * lines, through the same ShardTask, commit and outbox path as a real job.
 */
import {
  ConfigurationError,
  describeValue,
  MAX_EVENT_TIME,
  MAX_TIMER_TIME,
  type Output,
  type Pipeline,
  shardName,
} from '../core/index.ts';
import { type DriverRecord, TestDriver } from '../core/testing/test-driver.ts';
import { CoPartitioningCheck } from './co-partitioning.ts';

export interface SimulateOptions {
  /** Number of shards records are hashed over by partition key. @default 1 */
  readonly shards?: number;
  /** At the end, advance every shard's watermark to +Infinity (bounded input): all windows fire. @default false */
  readonly endOfInput?: boolean;
  /** Called with every published output, in emission order. */
  readonly onOutput: (output: Output) => void;
}

export type ScriptLine =
  | { kind: 'record'; record: DriverRecord }
  | { kind: 'watermark'; watermark: number; shard: string | undefined }
  | { kind: 'processingTime'; time: number }
  | { kind: 'restart' };

/**
 * Times on script lines are whole milliseconds, as Flink's are longs: JSON's 1.5 or 1e400
 * (Infinity) would otherwise give fractional or infinite watermarks, processing times and
 * arrival times. (1e3 or 1000.0 are the number 1000 once parsed, so they are taken.)
 */
function isWholeTime(t: unknown, bound: number): t is number {
  return typeof t === 'number' && Number.isInteger(t) && Math.abs(t) <= bound;
}

function shardId(value: unknown, line: number): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0) return shardName(value);
  if (typeof value === 'string' && value.length > 0) return value;
  throw new ConfigurationError(
    `line ${line}: "shard" must be a shard id or index; received ${describeValue(value)}`,
  );
}

/** The fields each kind of line may have (a line is exactly one kind). */
const FIELDS = {
  record: ['partitionKey', 'data', 'raw', 'shard', 'arrival'],
  watermark: ['watermark', 'shard'],
  processingTime: ['processingTime'],
  restart: ['restart'],
} as const;
type LineKind = keyof typeof FIELDS;

/** The fields that make a line a given kind. */
const MARKERS: ReadonlyArray<readonly [string, LineKind]> = [
  ['partitionKey', 'record'],
  ['data', 'record'],
  ['raw', 'record'],
  ['watermark', 'watermark'],
  ['processingTime', 'processingTime'],
  ['restart', 'restart'],
];

const FORMS =
  'a line is one of {"partitionKey", "data" or "raw", "shard"?, "arrival"?} (a record), {"watermark", "shard"?}, {"processingTime"} or {"restart": true}';

/** What each kind of line may hold, for errors. */
const SHAPES: Record<LineKind, string> = {
  record: 'a record has only "partitionKey", "data" or "raw", "shard" and "arrival"',
  watermark: 'a watermark line has only "watermark" and "shard"',
  processingTime: 'a processingTime line has only "processingTime"',
  restart: 'a restart line is {"restart": true} and nothing else',
};

const quoted = (names: readonly string[]): string => names.map((n) => `"${n}"`).join(', ');

const excerpt = (text: string): string => (text.length > 80 ? `${text.slice(0, 77)}...` : text);

/** Parses one NDJSON line of a simulate script. */
export function parseScriptLine(text: string, line: number): ScriptLine | undefined {
  if (text.trim() === '') return undefined;
  if (text.charCodeAt(0) === 0xfeff) {
    throw new ConfigurationError(
      `line ${line}: starts with a UTF-8 byte order mark (BOM), which is only skipped at the start of the input; remove it`,
    );
  }
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new ConfigurationError(`line ${line}: not valid JSON: ${excerpt(text)}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigurationError(`line ${line}: expected a JSON object; received ${describeValue(raw)}`);
  }
  const kinds = new Map<LineKind, string[]>();
  for (const [field, kind] of MARKERS) {
    if (field in raw) kinds.set(kind, [...(kinds.get(kind) ?? []), field]);
  }
  if (kinds.size > 1) {
    const parts = [...kinds].map(
      ([kind, fields]) => `${quoted(fields)} (${kind === 'record' ? 'a record' : `a ${kind} line`})`,
    );
    throw new ConfigurationError(
      `line ${line}: mixes ${parts.join(' and ')}; ${FORMS}, on a line of its own`,
    );
  }
  const kind = [...kinds.keys()][0];
  if (kind === undefined) {
    throw new ConfigurationError(`line ${line}: ${FORMS}; received ${excerpt(text)}`);
  }
  const allowed: readonly string[] = FIELDS[kind];
  const unknown = Object.keys(raw).filter((field) => !allowed.includes(field));
  if (unknown.length > 0) {
    throw new ConfigurationError(
      `line ${line}: unknown field${unknown.length > 1 ? 's' : ''} ${quoted(unknown)} (misspelt?); ${SHAPES[kind]}`,
    );
  }
  switch (kind) {
    case 'restart':
      if (raw.restart !== true) {
        throw new ConfigurationError(
          `line ${line}: "restart" must be true; received ${describeValue(raw.restart)}`,
        );
      }
      return { kind: 'restart' };
    case 'watermark':
      // Any timer's time (a window's cleanup lies up to two durations past its timestamps), so a
      // watermark line can fire every timer of a shard; +Infinity is --end-of-input's.
      if (!isWholeTime(raw.watermark, MAX_TIMER_TIME)) {
        throw new ConfigurationError(
          `line ${line}: "watermark" must be whole epoch milliseconds within ±${MAX_TIMER_TIME} (the range of timers; --end-of-input advances every shard to +Infinity); received ${describeValue(raw.watermark)}`,
        );
      }
      return { kind: 'watermark', watermark: raw.watermark, shard: shardId(raw.shard, line) };
    case 'processingTime':
      // As "arrival": later records without one arrive at this time (whole milliseconds, as
      // Flink's processing time is a long).
      if (!isWholeTime(raw.processingTime, MAX_EVENT_TIME)) {
        throw new ConfigurationError(
          `line ${line}: "processingTime" must be whole epoch milliseconds within ±${MAX_EVENT_TIME} (a Date's range); received ${describeValue(raw.processingTime)}`,
        );
      }
      return { kind: 'processingTime', time: raw.processingTime };
    case 'record':
      return { kind: 'record', record: parseRecord(raw, line) };
  }
}

/** Kinesis's limit (PutRecord), as floe produce and the embedded log apply it. */
const MAX_PARTITION_KEY_LENGTH = 256;

function parseRecord(raw: Record<string, unknown>, line: number): DriverRecord {
  if (
    typeof raw.partitionKey !== 'string' ||
    raw.partitionKey === '' ||
    raw.partitionKey.length > MAX_PARTITION_KEY_LENGTH
  ) {
    throw new ConfigurationError(
      `line ${line}: a record needs a "partitionKey" string of 1 to ${MAX_PARTITION_KEY_LENGTH} characters, as Kinesis; received ${'partitionKey' in raw ? describeValue(raw.partitionKey) : 'none'}`,
    );
  }
  if ('data' in raw && 'raw' in raw) {
    throw new ConfigurationError(
      `line ${line}: a record has "data" (any JSON) or "raw" (a string payload), not both`,
    );
  }
  if (!('data' in raw) && !('raw' in raw)) {
    throw new ConfigurationError(
      `line ${line}: a record needs "data" (any JSON) or "raw" (a string payload)`,
    );
  }
  if ('raw' in raw && typeof raw.raw !== 'string') {
    throw new ConfigurationError(
      `line ${line}: "raw" must be a string (the payload as is; use "data" for JSON); received ${describeValue(raw.raw)}`,
    );
  }
  // Whole milliseconds within a Date's range, as floe produce requires (1e400 reads as Infinity:
  // arrivalTime null) and as Kinesis arrival timestamps are.
  if (raw.arrival !== undefined && !isWholeTime(raw.arrival, MAX_EVENT_TIME)) {
    throw new ConfigurationError(
      `line ${line}: "arrival" must be whole epoch milliseconds within ±${MAX_EVENT_TIME} (a Date's range); received ${describeValue(raw.arrival)}`,
    );
  }
  // The payload travels as bytes, as on Kinesis, so the pipeline's deserializer runs for real.
  const payload = typeof raw.raw === 'string' ? raw.raw : JSON.stringify(raw.data);
  const shard = shardId(raw.shard, line);
  return {
    partitionKey: raw.partitionKey,
    data: new TextEncoder().encode(payload),
    ...(shard === undefined ? {} : { shard }),
    ...(raw.arrival === undefined ? {} : { arrival: raw.arrival as number }),
  };
}

/**
 * The NDJSON line `floe simulate` writes for an output: `{"sink", "value"}`, both always there.
 * JSON has no `undefined`: an element that is `undefined` (a map returning nothing) is written
 * as `"value": null`, as the embedded sink's table stores it, rather than leaving the line
 * without its "value" field.
 */
export function simulateOutputLine(output: Output): string {
  return JSON.stringify({ sink: output.sink, value: output.value === undefined ? null : output.value });
}

/** The shard ids of a driver, for error messages (long lists are abbreviated). */
function describeShards(shardIds: readonly string[]): string {
  if (shardIds.length === 1) return `with --shards 1 the only shard is ${shardIds[0]} (index 0)`;
  const ids = shardIds.length <= 8 ? shardIds.join(', ') : `${shardIds[0]} to ${shardIds.at(-1)}`;
  return `with --shards ${shardIds.length} the shards are ${ids} (or their indexes 0 to ${shardIds.length - 1})`;
}

/**
 * Runs a script; returns counts. Records between control lines are batched per shard. An
 * invalid line stops the run with an error naming it, after the lines before it have been
 * processed and their outputs passed to `onOutput`. A UTF-8 byte order mark (BOM) at the start
 * of the first line is skipped.
 */
export async function simulate(
  pipeline: Pipeline,
  lines: AsyncIterable<string> | Iterable<string>,
  options: SimulateOptions,
): Promise<{ records: number; outputs: number }> {
  // As `floe run` does: a key whose records reach two shards (a record's "shard" overrides the
  // partition key's) has two copies of its state, and its results would be silently wrong.
  const coPartitioning = new CoPartitioningCheck();
  const driver = new TestDriver(pipeline, {
    shards: options.shards ?? 1,
    beforeCommit: (shard, commit) => {
      try {
        coPartitioning.check(shard, commit.mutations);
      } catch (error) {
        throw new ConfigurationError(
          `records of one key reached two shards, which floe run refuses too (a record's "shard" sends it to that shard, whatever its partition key; give all records of a key the same shard, or none): ${(error as Error).message}`,
        );
      }
    },
  });
  let emitted = 0;
  const flushOutputs = (): void => {
    const all = driver.outputs();
    for (; emitted < all.length; emitted++) options.onOutput(all[emitted]!);
  };
  let pending: DriverRecord[] = [];
  let pendingFrom = 0; // the input line of pending[0]
  let lastRecordLine = 0;
  const sendPending = async (): Promise<void> => {
    if (pending.length === 0) return;
    try {
      await driver.send(pending);
    } catch (error) {
      // Name the lines, as an invalid line is named (their outputs before the failing commit are written).
      flushOutputs();
      if (!(error instanceof ConfigurationError)) throw error;
      const lines =
        pendingFrom === lastRecordLine ? `line ${pendingFrom}` : `lines ${pendingFrom}-${lastRecordLine}`;
      throw new ConfigurationError(`${lines}: ${error.message}`);
    }
    pending = [];
    flushOutputs();
  };
  const checkShard = (shard: string | undefined, line: number): void => {
    if (shard !== undefined && !driver.shardIds.includes(shard)) {
      throw new ConfigurationError(
        `line ${line}: unknown shard "${shard}"; ${describeShards(driver.shardIds)}`,
      );
    }
  };
  let lineNumber = 0;
  let records = 0;
  for await (const text of lines) {
    lineNumber++;
    let line: ScriptLine | undefined;
    try {
      line = parseScriptLine(lineNumber === 1 ? text.replace(/^\uFEFF/, '') : text, lineNumber);
      if (line?.kind === 'record') checkShard(line.record.shard, lineNumber);
      else if (line?.kind === 'watermark') checkShard(line.shard, lineNumber);
    } catch (error) {
      // Everything before the invalid line runs, so its outputs are there to compare with.
      await sendPending();
      throw error;
    }
    if (line === undefined) continue;
    if (line.kind === 'record') {
      records++;
      if (pending.length === 0) pendingFrom = lineNumber;
      lastRecordLine = lineNumber;
      pending.push(line.record);
      if (pending.length >= 1000) await sendPending();
      continue;
    }
    await sendPending();
    if (line.kind === 'restart') driver.restart();
    else if (line.kind === 'processingTime') await driver.advanceProcessingTime(line.time);
    else await driver.advanceWatermark(line.watermark, line.shard);
    flushOutputs();
  }
  await sendPending();
  if (options.endOfInput) await driver.advanceWatermark(Number.POSITIVE_INFINITY);
  flushOutputs();
  return { records, outputs: emitted };
}
