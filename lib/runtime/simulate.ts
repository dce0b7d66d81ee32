/**
 * `floe simulate`: runs a pipeline in memory over an NDJSON script of records and control
 * lines, through the same ShardTask, commit and outbox path as a real job.
 */
import { ConfigurationError, describeValue, type Output, type Pipeline, shardName } from '../core/index.ts';
import { type DriverRecord, TestDriver } from '../core/testing/test-driver.ts';

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

function shardId(value: unknown, line: number): string | undefined {
  if (value === undefined) return undefined;
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0) return shardName(value);
  if (typeof value === 'string' && value.length > 0) return value;
  throw new ConfigurationError(
    `line ${line}: "shard" must be a shard id or index; received ${describeValue(value)}`,
  );
}

/** Parses one NDJSON line of a simulate script. */
export function parseScriptLine(text: string, line: number): ScriptLine | undefined {
  if (text.trim() === '') return undefined;
  let raw: Record<string, unknown>;
  try {
    raw = JSON.parse(text) as Record<string, unknown>;
  } catch {
    throw new ConfigurationError(`line ${line}: not valid JSON: ${text.slice(0, 80)}`);
  }
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) {
    throw new ConfigurationError(`line ${line}: expected a JSON object; received ${describeValue(raw)}`);
  }
  if (raw.restart === true) return { kind: 'restart' };
  if ('watermark' in raw) {
    if (typeof raw.watermark !== 'number') {
      throw new ConfigurationError(
        `line ${line}: "watermark" must be epoch milliseconds; received ${describeValue(raw.watermark)}`,
      );
    }
    return { kind: 'watermark', watermark: raw.watermark, shard: shardId(raw.shard, line) };
  }
  if ('processingTime' in raw) {
    if (typeof raw.processingTime !== 'number') {
      throw new ConfigurationError(`line ${line}: "processingTime" must be epoch milliseconds`);
    }
    return { kind: 'processingTime', time: raw.processingTime };
  }
  if (typeof raw.partitionKey !== 'string' || raw.partitionKey === '') {
    throw new ConfigurationError(
      `line ${line}: a record needs a non-empty string "partitionKey" (or use {"watermark": ms} / {"restart": true}); received ${text.slice(0, 80)}`,
    );
  }
  if (!('data' in raw) && typeof raw.raw !== 'string') {
    throw new ConfigurationError(
      `line ${line}: a record needs "data" (any JSON) or "raw" (a string payload)`,
    );
  }
  if (raw.arrival !== undefined && typeof raw.arrival !== 'number') {
    throw new ConfigurationError(
      `line ${line}: "arrival" must be epoch milliseconds; received ${describeValue(raw.arrival)}`,
    );
  }
  // The payload travels as bytes, as on Kinesis, so the pipeline's deserializer runs for real.
  const payload = typeof raw.raw === 'string' ? raw.raw : JSON.stringify(raw.data);
  const shard = shardId(raw.shard, line);
  return {
    kind: 'record',
    record: {
      partitionKey: raw.partitionKey,
      data: new TextEncoder().encode(payload),
      ...(shard === undefined ? {} : { shard }),
      ...(raw.arrival === undefined ? {} : { arrival: raw.arrival as number }),
    },
  };
}

/** Runs a script; returns counts. Records between control lines are batched per shard. */
export async function simulate(
  pipeline: Pipeline,
  lines: AsyncIterable<string> | Iterable<string>,
  options: SimulateOptions,
): Promise<{ records: number; outputs: number }> {
  const driver = new TestDriver(pipeline, { shards: options.shards ?? 1 });
  let emitted = 0;
  const flushOutputs = (): void => {
    const all = driver.outputs();
    for (; emitted < all.length; emitted++) options.onOutput(all[emitted]!);
  };
  let pending: DriverRecord[] = [];
  const sendPending = async (): Promise<void> => {
    if (pending.length === 0) return;
    await driver.send(pending);
    pending = [];
    flushOutputs();
  };
  let lineNumber = 0;
  let records = 0;
  for await (const text of lines) {
    lineNumber++;
    const line = parseScriptLine(text, lineNumber);
    if (line === undefined) continue;
    if (line.kind === 'record') {
      if (line.record.shard !== undefined && !driver.shardIds.includes(line.record.shard)) {
        throw new ConfigurationError(
          `line ${lineNumber}: unknown shard "${line.record.shard}"; with --shards ${driver.shardIds.length} the shards are ${driver.shardIds.join(', ')}`,
        );
      }
      records++;
      pending.push(line.record);
      if (pending.length >= 1000) await sendPending();
      continue;
    }
    await sendPending();
    if (line.kind === 'restart') driver.restart();
    else if (line.kind === 'processingTime') await driver.advanceProcessingTime(line.time);
    else {
      if (line.shard !== undefined && !driver.shardIds.includes(line.shard)) {
        throw new ConfigurationError(`line ${lineNumber}: unknown shard "${line.shard}"`);
      }
      await driver.advanceWatermark(line.watermark, line.shard);
    }
    flushOutputs();
  }
  await sendPending();
  if (options.endOfInput) await driver.advanceWatermark(Number.POSITIVE_INFINITY);
  flushOutputs();
  return { records, outputs: emitted };
}
