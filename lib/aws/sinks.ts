/**
 * AWS sinks: publish committed outputs to Kinesis, DynamoDB and S3. Each is idempotent by
 * output id (`job/shard/commit/index`, identical on every retry of a commit), so the worker's
 * at-least-once publish after commit gives each output exactly one effect:
 *
 * - KinesisStreamSink: Kinesis cannot deduplicate, so every record is `{"id","value"}` JSON and
 *   consumers deduplicate by `id` (a republished output arrives again with the same id).
 * - DynamoDbUpsertSink: one item per key derived from the value; republishing overwrites the item
 *   with the same content. Each write is conditional on the item not holding a later output of the
 *   same job (`floeRank`: generation and shard depth, then `floeOrder`: shard, commit and index),
 *   so a worker that stalls and publishes late cannot replace a newer result
 *   (`conditionalWrites: false`: BatchWriteItem, last writer wins).
 * - S3ObjectSink: one NDJSON object per (sink, job, shard, commit); a retry rewrites the same key
 *   with the same lines (merged by id with what is already there, so nothing is lost either).
 *   It also serves the dead-letter output (`floe.dead-letter`).
 * - RoutingSink (lib/runtime/routing-sink.ts, re-exported): sends each named sink's outputs to
 *   its own Sink, and the outputs a sink rejects to the dead-letter output.
 *
 * Limits (AWS): PutRecords <= 500 records and <= 5 MiB per request including partition keys,
 * <= 1 MiB per record (data + partition key); BatchWriteItem <= 25 puts, no two for one key,
 * items <= 400 KB. An output over a limit or without a valid key is rejected before anything is
 * sent, together with every other such output of the publish (SinkOutputError). Partial failures (FailedRecordCount, UnprocessedItems) are retried with
 * exponential backoff and full jitter; what still fails becomes a TransientBackendError.
 */
import { createHash } from 'node:crypto';
import {
  type AttributeValue,
  BatchWriteItemCommand,
  type DynamoDBClient,
  PutItemCommand,
  type WriteRequest,
} from '@aws-sdk/client-dynamodb';
import {
  type KinesisClient,
  PutRecordsCommand,
  type PutRecordsCommandOutput,
  type PutRecordsRequestEntry,
} from '@aws-sdk/client-kinesis';
import { GetObjectCommand, PutObjectCommand, type S3Client } from '@aws-sdk/client-s3';
import {
  ConfigurationError,
  describeValue,
  SinkOutputError,
  StateFormatError,
  StateSerializationError,
  TerminalError,
  TransientBackendError,
} from '../core/errors.ts';
import { outputValueJson } from '../core/outputs.ts';
import type { Output, PublishContext, Sink } from '../core/ports.ts';
import { isTransientAwsError } from './retry.ts';

export { SinkOutputError } from '../core/errors.ts';
export { RoutingSink } from '../runtime/routing-sink.ts';

// ---- shared helpers ----

export interface RetryOptions {
  /** Attempts per request, the first included. @default 10 */
  readonly maxAttempts?: number;
  /** Backoff base: attempt n waits a random time in [0, min(max, base * 2^n)). @default 50 */
  readonly baseDelayMs?: number;
  /** @default 5000 */
  readonly maxDelayMs?: number;
}

interface ResolvedRetry {
  readonly maxAttempts: number;
  readonly baseDelayMs: number;
  readonly maxDelayMs: number;
}

function resolveRetry(retry: RetryOptions | undefined): ResolvedRetry {
  const maxAttempts = Math.floor(retry?.maxAttempts ?? 10);
  if (!(maxAttempts >= 1)) {
    throw new ConfigurationError(`retry.maxAttempts must be >= 1; received ${describeValue(maxAttempts)}`);
  }
  return {
    maxAttempts,
    baseDelayMs: Math.max(0, retry?.baseDelayMs ?? 50),
    maxDelayMs: Math.max(0, retry?.maxDelayMs ?? 5_000),
  };
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Full-jitter exponential backoff before retry number `attempt` (1 = first retry). */
function backoff(retry: ResolvedRetry, attempt: number): Promise<void> {
  const cap = Math.min(retry.maxDelayMs, retry.baseDelayMs * 2 ** Math.min(attempt - 1, 30));
  return sleep(Math.random() * cap);
}

function errorName(error: unknown): string {
  return (error as { name?: string } | undefined)?.name ?? '';
}

/** Maps an SDK error: transient ones to TransientBackendError, missing resources to ConfigurationError. */
function mapError(what: string, error: unknown, missingHint: string): unknown {
  if (error instanceof TerminalError || error instanceof TransientBackendError) return error;
  const message = (error as Error | undefined)?.message ?? String(error);
  const name = errorName(error);
  if (name === 'ResourceNotFoundException' || name === 'NoSuchBucket') {
    return new ConfigurationError(`${what} failed: ${name}: ${message}; ${missingHint}`, { cause: error });
  }
  // The classification every AWS call of floe uses (throttling, 429/5xx, timeouts, dropped
  // connections), so that a sink retries what the backend retries.
  if (isTransientAwsError(error)) {
    return new TransientBackendError(`${what} failed transiently: ${name}: ${message}`, { cause: error });
  }
  return error;
}

/** The parts of an output id `${job}/${shard}/${commit}/${index}` (the job may contain '/'). */
export interface OutputIdParts {
  readonly job: string;
  readonly shard: string;
  readonly commit: number;
  readonly index: number;
}

export function parseOutputId(id: string): OutputIdParts {
  const parts = id.split('/');
  const index = Number(parts[parts.length - 1]);
  const commit = Number(parts[parts.length - 2]);
  const shard = parts[parts.length - 3];
  const job = parts.slice(0, -3).join('/');
  if (
    parts.length < 4 ||
    job.length === 0 ||
    !shard ||
    !/^\d+$/.test(parts[parts.length - 1] ?? '') ||
    !/^\d+$/.test(parts[parts.length - 2] ?? '') ||
    !Number.isSafeInteger(index) ||
    !Number.isSafeInteger(commit)
  ) {
    throw new SinkOutputError(
      `output id ${describeValue(id)} is not of the form job/shard/commitNumber/index; outputs must come from a ShardTask`,
    );
  }
  return { job, shard, commit, index };
}

/**
 * `{"id":...,"value":...}` with the keys in this order; an undefined value (JSON has none) is
 * `null`, as in `floe simulate`'s lines and the embedded sinks.
 */
export function outputRecordJson(output: Output): string {
  return `{"id":${JSON.stringify(output.id)},"value":${outputValueJson(output) ?? 'null'}}`;
}

async function forEachLimit<T>(items: readonly T[], limit: number, fn: (item: T) => Promise<void>) {
  let next = 0;
  let failed = false;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (!failed && next < items.length) {
      const item = items[next++]!;
      try {
        await fn(item);
      } catch (error) {
        failed = true;
        throw error;
      }
    }
  });
  const results = await Promise.allSettled(workers);
  for (const r of results) if (r.status === 'rejected') throw r.reason;
}

const utf8Length = (text: string): number => Buffer.byteLength(text, 'utf8');

/**
 * `build` of every output, before anything is sent. The outputs it rejects (SinkOutputError) are
 * thrown together, so a caller can set all of them aside at once and publish the rest.
 */
function buildAll<T>(outputs: readonly Output[], build: (output: Output) => T): T[] {
  const built: T[] = [];
  const rejected: SinkOutputError[] = [];
  for (const o of outputs) {
    try {
      built.push(build(o));
    } catch (error) {
      if (!(error instanceof SinkOutputError)) throw error;
      rejected.push(error);
    }
  }
  if (rejected.length > 0) throw SinkOutputError.combine(rejected);
  return built;
}

// ---- Kinesis ----

/** PutRecords limits. */
export const KINESIS_MAX_RECORDS_PER_REQUEST = 500;
export const KINESIS_MAX_REQUEST_BYTES = 5 * 1024 * 1024;
export const KINESIS_MAX_RECORD_BYTES = 1024 * 1024;
const KINESIS_MAX_PARTITION_KEY_LENGTH = 256;

export interface KinesisStreamSinkOptions {
  readonly client: KinesisClient;
  /** Stream name, or a stream ARN (`arn:...:stream/name`, sent as StreamARN). */
  readonly stream: string;
  /**
   * The record's partition key (1-256 characters). Default: the output id (spreads records
   * evenly; hashed with MD5 when longer than 256 characters). Give one to keep a key's records
   * on one shard, e.g. `(v) => v.page`.
   */
  readonly partitionKey?: (value: unknown, output: Output) => string;
  readonly retry?: RetryOptions;
}

/**
 * Writes each output as one Kinesis record whose data is `{"id": <output id>, "value": <value>}`
 * (UTF-8 JSON). Kinesis keeps every put, so a republished output appears again: consumers
 * deduplicate by `id` (ids are unique per output and identical on every retry). Records are
 * sent in order in PutRecords requests of at most 500 records / 5 MiB; records that fail
 * (throttling, internal failure) are resent with backoff, so under retries the order of
 * records of one partition key is not guaranteed: order by the id's (commit, index) if needed.
 */
export class KinesisStreamSink implements Sink {
  readonly stream: string;
  private readonly client: KinesisClient;
  private readonly target: { StreamName: string } | { StreamARN: string };
  private readonly partitionKey: ((value: unknown, output: Output) => string) | undefined;
  private readonly retry: ResolvedRetry;

  constructor(options: KinesisStreamSinkOptions) {
    if (typeof options.stream !== 'string' || options.stream.length === 0) {
      throw new ConfigurationError(
        `KinesisStreamSink needs a stream name or ARN; received ${describeValue(options.stream)}`,
      );
    }
    this.client = options.client;
    this.stream = options.stream;
    this.target = options.stream.startsWith('arn:')
      ? { StreamARN: options.stream }
      : { StreamName: options.stream };
    this.partitionKey = options.partitionKey;
    this.retry = resolveRetry(options.retry);
  }

  async publish(outputs: readonly Output[]): Promise<void> {
    if (outputs.length === 0) return;
    // Build and check every record before anything is sent.
    const entries = buildAll(outputs, (o) => this.entry(o));
    let batch: PutRecordsRequestEntry[] = [];
    let batchBytes = 0;
    for (const { entry, bytes } of entries) {
      if (kinesisRequestFull(batch.length, batchBytes, bytes)) {
        await this.put(batch);
        batch = [];
        batchBytes = 0;
      }
      batch.push(entry);
      batchBytes += bytes;
    }
    if (batch.length > 0) await this.put(batch);
  }

  private entry(output: Output): { entry: PutRecordsRequestEntry; bytes: number } {
    const data = Buffer.from(outputRecordJson(output), 'utf8');
    const key = this.keyOf(output);
    const bytes = data.length + utf8Length(key);
    if (bytes > KINESIS_MAX_RECORD_BYTES) {
      throw new SinkOutputError(
        `output ${output.id} to sink "${output.sink}" is ${bytes} bytes as a Kinesis record (data + partition key); ` +
          `the limit is ${KINESIS_MAX_RECORD_BYTES} bytes: emit smaller values or use an S3 sink for large ones`,
        { outputId: output.id },
      );
    }
    return { entry: { Data: data, PartitionKey: key }, bytes };
  }

  private keyOf(output: Output): string {
    if (this.partitionKey === undefined) {
      return output.id.length <= KINESIS_MAX_PARTITION_KEY_LENGTH
        ? output.id
        : createHash('md5').update(output.id).digest('hex');
    }
    let key: unknown;
    try {
      key = this.partitionKey(output.value, output);
    } catch (error) {
      throw new SinkOutputError(
        `the partitionKey function of the Kinesis sink for stream "${this.stream}" threw for output ${output.id}: ${(error as Error)?.message ?? String(error)}`,
        { cause: error, outputId: output.id },
      );
    }
    if (typeof key !== 'string' || key.length === 0 || key.length > KINESIS_MAX_PARTITION_KEY_LENGTH) {
      throw new SinkOutputError(
        `the partitionKey function of the Kinesis sink for stream "${this.stream}" must return a string of 1-256 characters; ` +
          `for output ${output.id} it returned ${describeValue(key)}`,
        { outputId: output.id },
      );
    }
    return key;
  }

  /** One PutRecords request, resending failed records with backoff. */
  private async put(records: PutRecordsRequestEntry[]): Promise<void> {
    await putKinesisRecords(
      {
        client: this.client,
        target: this.target,
        stream: this.stream,
        retry: this.retry,
        missingHint: 'create the stream or fix the sink configuration',
        exhausted: 'the outputs stay unpublished and are retried by the next publish',
      },
      records,
    );
  }
}

/** Whether a record of `bytes` (data + partition key) no longer fits a PutRecords request holding `count` records of `requestBytes`. */
export function kinesisRequestFull(count: number, requestBytes: number, bytes: number): boolean {
  return (
    count > 0 &&
    (count >= KINESIS_MAX_RECORDS_PER_REQUEST || requestBytes + bytes > KINESIS_MAX_REQUEST_BYTES)
  );
}

/** A PutRecords entry. */
export type PutKinesisEntry = PutRecordsRequestEntry;

export interface KinesisPutOptions {
  readonly client: KinesisClient;
  readonly target: { StreamName: string } | { StreamARN: string };
  /** The stream, as named in errors. */
  readonly stream: string;
  readonly retry?: RetryOptions;
  /** What to do when the stream does not exist (ends the ConfigurationError). */
  readonly missingHint: string;
  /** What became of the records when some still fail after every attempt (ends the error). */
  readonly exhausted: string;
}

export interface KinesisPutResult {
  /** Records sent again after a partial failure (each counted once per resend). */
  readonly retried: number;
  /**
   * Records that failed while a later record of the same partition key in the same request was
   * written: once resent, they come after it in the shard.
   */
  readonly overtaken: number;
}

/**
 * One PutRecords request (at most 500 records / 5 MiB: see kinesisRequestFull), resending only
 * the records that failed, with backoff, until every one is written; failed records keep their
 * relative order. Kinesis goes on with a request's later records when one fails, so a resent
 * record can land after a later record of its partition key from the same request (counted as
 * `overtaken`); never after a record of a later request, when requests are sent one at a time.
 */
export async function putKinesisRecords(
  options: KinesisPutOptions,
  records: readonly PutRecordsRequestEntry[],
): Promise<KinesisPutResult> {
  const retry = resolveRetry(options.retry);
  let pending = records;
  let lastErrors = '';
  let retried = 0;
  const overtaken = new Set<PutRecordsRequestEntry>();
  for (let attempt = 1; attempt <= retry.maxAttempts; attempt++) {
    if (attempt > 1) {
      await backoff(retry, attempt - 1);
      retried += pending.length;
    }
    let result: PutRecordsCommandOutput;
    try {
      result = await options.client.send(new PutRecordsCommand({ ...options.target, Records: [...pending] }));
    } catch (error) {
      const mapped = mapError(`PutRecords to Kinesis stream "${options.stream}"`, error, options.missingHint);
      if (mapped instanceof TransientBackendError && attempt < retry.maxAttempts) {
        lastErrors = mapped.message;
        continue;
      }
      throw mapped;
    }
    if (!result.FailedRecordCount) return { retried, overtaken: overtaken.size };
    const failed: PutRecordsRequestEntry[] = [];
    const codes = new Map<string, number>();
    const results = result.Records ?? [];
    // Partition keys written by the request after a failed record of theirs.
    const failedKeys = new Set<string | undefined>();
    pending.forEach((entry, i) => {
      const r = results[i];
      // A missing result entry counts as failed: resending is safe (consumers deduplicate).
      if (r === undefined || r.ErrorCode !== undefined) {
        failed.push(entry);
        failedKeys.add(entry.PartitionKey);
        const code = r?.ErrorCode ?? 'Missing';
        codes.set(code, (codes.get(code) ?? 0) + 1);
      } else if (failedKeys.has(entry.PartitionKey)) {
        for (const f of failed) if (f.PartitionKey === entry.PartitionKey) overtaken.add(f);
      }
    });
    if (failed.length === 0) return { retried, overtaken: overtaken.size };
    lastErrors = [...codes].map(([code, n]) => `${n} x ${code}`).join(', ');
    pending = failed;
  }
  throw new TransientBackendError(
    `PutRecords to Kinesis stream "${options.stream}": ${pending.length} record(s) still failed after ${retry.maxAttempts} attempts (${lastErrors}); ${options.exhausted}`,
  );
}

// ---- DynamoDB ----

export const DYNAMODB_MAX_BATCH_WRITE = 25;
export const DYNAMODB_MAX_ITEM_BYTES = 400 * 1024;
/** The largest partition key value (a sort key: half of it). */
export const DYNAMODB_MAX_KEY_BYTES = 2048;
/** DynamoDB's ValidationException for a partition or sort key value over its size limit. */
const KEY_TOO_LONG = /size of (hashkey|all range keys) has exceeded/i;
/** The attribute holding the id of the output that wrote the item. */
export const OUTPUT_ID_ATTRIBUTE = 'floeOutputId';
/** The upsert sink's order of an item's output among its job's and shard's outputs. */
export const OUTPUT_ORDER_ATTRIBUTE = 'floeOrder';
/** The upsert sink's rank of an item's writer within its job: generation, then lineage depth. */
export const OUTPUT_RANK_ATTRIBUTE = 'floeRank';
const DIGITS = 16; // Number.MAX_SAFE_INTEGER has 16 digits
/** The end of an order or a rank: two zero-padded numbers and a `/`. */
const PADDED_PAIR_LENGTH = DIGITS + 1 + DIGITS;
const pad = (n: number): string => String(n).padStart(DIGITS, '0');

/**
 * `<job>/<shard>/<commit>/<index>` (the job as in the output id, `job` or `job@generation`) with
 * commit and index zero-padded: within one job generation and shard, string order is output
 * order (commit number, then index within the commit).
 */
export function outputOrder(id: string): string {
  const { job, shard, commit, index } = parseOutputId(id);
  return `${job}/${shard}/${pad(commit)}/${pad(index)}`;
}

/**
 * `<job>/<generation>/<depth>` with generation and depth zero-padded, the job without the
 * `@generation` of its output ids (outputJobId): within one job, string order is (generation,
 * lineage depth) order, and `<job>/` tells the job's items from other jobs' (job ids have no '/').
 */
export function outputRank(id: string, depth: number): string {
  if (!Number.isSafeInteger(depth) || depth < 0) {
    throw new ConfigurationError(
      `a shard's lineage depth is a whole number >= 0; received ${describeValue(depth)}`,
    );
  }
  const { job } = parseOutputId(id);
  const generation = /^(.*)@(\d+)$/.exec(job);
  return generation === null
    ? `${job}/${pad(0)}/${pad(depth)}`
    : `${generation[1]}/${pad(Number(generation[2]))}/${pad(depth)}`;
}

export type DynamoKey = Record<string, string | number>;

export interface DynamoDbUpsertSinkOptions {
  readonly client: DynamoDBClient;
  /** Table name or ARN. */
  readonly table: string;
  /**
   * The item's primary key, derived from the value: the table's partition key attribute and, for
   * a composite key, its sort key attribute, e.g. `(v) => ({ page: v.page, windowStart: v.windowStart })`.
   */
  readonly key: (value: unknown, output: Output) => DynamoKey;
  /**
   * Store the whole value under this attribute. Default: an object value's fields become the
   * item's attributes; any other value is stored under `value`.
   */
  readonly valueAttribute?: string;
  readonly retry?: RetryOptions;
  /**
   * Write each item with a PutItem conditional on its `floeOrder` and `floeRank` attributes:
   * skipped when the stored item holds a later output of the same job (a worker that stalled past
   * its lease publishing after its successor, its reshard children or a replay's new generation).
   * false: BatchWriteItem of 25 items, last writer wins, 25x fewer requests. @default true
   */
  readonly conditionalWrites?: boolean;
  /** Concurrent requests: PutItem (conditional writes) or BatchWriteItem. @default 16, or 4 for BatchWriteItem */
  readonly concurrency?: number;
}

/**
 * Upserts one item per key: `{...value fields, ...key, floeOutputId, floeOrder, floeRank}`.
 * Republishing writes the same items again (same content), so the table ends the same. Within one
 * publish, only the last output per key is written (an earlier one would be overwritten anyway,
 * and BatchWriteItem rejects two writes of one key). Across publishes, outputs of one shard are
 * published in commit order, and a conditional write keeps the order of a job's outputs when
 * publishes overlap (a stalled worker publishing late):
 *
 * - `floeRank` (outputRank: job, generation, lineage depth) first: an item of a later generation
 *   of the job, or of a deeper shard of the same generation (keys are co-partitioned, so the
 *   deeper writer is the key's newer owner, a reshard child), is not replaced;
 * - at an equal rank, `floeOrder` (outputOrder: shard, commit number, index): an item holding a
 *   later output of the same shard is not replaced; one of another shard of the same depth (a
 *   sink key that is not co-partitioned) is, as before ranks.
 *
 * An item of another job is replaced (a replay `--as-job` writes its own results). `floeOrder`
 * keeps the format of versions without `floeRank`, whose writes are conditioned on it alone: an
 * item without `floeRank` is ordered by `floeOrder` alone, and such a writer still loses to a
 * later output of its own shard. Without a PublishContext (no depth), an item is written without
 * `floeRank`, as those versions did. Values are stored as their JSON form (numbers as N, strings
 * as S, objects as M, ...).
 */
export class DynamoDbUpsertSink implements Sink {
  readonly table: string;
  private readonly client: DynamoDBClient;
  private readonly key: (value: unknown, output: Output) => DynamoKey;
  private readonly valueAttribute: string | undefined;
  private readonly retry: ResolvedRetry;
  private readonly concurrency: number;
  private readonly conditional: boolean;

  constructor(options: DynamoDbUpsertSinkOptions) {
    if (typeof options.table !== 'string' || options.table.length === 0) {
      throw new ConfigurationError(
        `DynamoDbUpsertSink needs a table name or ARN; received ${describeValue(options.table)}`,
      );
    }
    if (typeof options.key !== 'function') {
      throw new ConfigurationError(
        `DynamoDbUpsertSink for table "${options.table}" needs a key function (value) => {attribute: string | number}; received ${describeValue(options.key)}`,
      );
    }
    if (options.valueAttribute !== undefined && options.valueAttribute.length === 0) {
      throw new ConfigurationError('DynamoDbUpsertSink valueAttribute must not be empty');
    }
    this.client = options.client;
    this.table = options.table;
    this.key = options.key;
    this.valueAttribute = options.valueAttribute;
    this.retry = resolveRetry(options.retry);
    this.conditional = options.conditionalWrites !== false;
    this.concurrency = Math.max(1, Math.floor(options.concurrency ?? (this.conditional ? 16 : 4)));
  }

  async publish(outputs: readonly Output[], context?: PublishContext): Promise<void> {
    if (outputs.length === 0) return;
    // Last output per key, in order of each key's last write.
    const byKey = new Map<string, Record<string, AttributeValue>>();
    for (const { id, item } of buildAll(outputs, (o) => this.item(o, context?.depth))) {
      byKey.delete(id);
      byKey.set(id, item);
    }
    if (this.conditional) {
      await forEachLimit([...byKey.values()], this.concurrency, (item) => this.put(item));
      return;
    }
    const requests: WriteRequest[] = [...byKey.values()].map((Item) => ({ PutRequest: { Item } }));
    const batches: WriteRequest[][] = [];
    for (let i = 0; i < requests.length; i += DYNAMODB_MAX_BATCH_WRITE) {
      batches.push(requests.slice(i, i + DYNAMODB_MAX_BATCH_WRITE));
    }
    await forEachLimit(batches, this.concurrency, (batch) => this.write(batch));
  }

  private item(
    output: Output,
    depth: number | undefined,
  ): { id: string; item: Record<string, AttributeValue> } {
    const json = outputValueJson(output);
    const value: unknown = json === undefined ? undefined : JSON.parse(json);
    let key: unknown;
    try {
      key = this.key(value, output);
    } catch (error) {
      throw new SinkOutputError(
        `the key function of the DynamoDB sink for table "${this.table}" threw for output ${output.id}: ${(error as Error)?.message ?? String(error)}`,
        { cause: error, outputId: output.id },
      );
    }
    const entries = validKey(key);
    if (entries === undefined) {
      throw new SinkOutputError(
        `the key function of the DynamoDB sink for table "${this.table}" must return 1 or 2 attributes with a non-empty string or finite number each; ` +
          `for output ${output.id} it returned ${describeValue(key)} (value ${describeValue(value)})`,
        { outputId: output.id },
      );
    }
    const long = entries.find(([, v]) => typeof v === 'string' && utf8Length(v) > DYNAMODB_MAX_KEY_BYTES);
    if (long !== undefined) {
      throw new SinkOutputError(
        `output ${output.id} to sink "${output.sink}" has a DynamoDB key attribute "${long[0]}" of ${utf8Length(long[1] as string)} bytes; ` +
          `a partition key holds at most ${DYNAMODB_MAX_KEY_BYTES} bytes (a sort key ${DYNAMODB_MAX_KEY_BYTES / 2})`,
        { outputId: output.id },
      );
    }
    // Null prototype: a value field named __proto__ stays an ordinary attribute.
    const fields: Record<string, unknown> = Object.create(null);
    if (this.valueAttribute !== undefined) {
      if (value !== undefined) fields[this.valueAttribute] = value;
    } else if (value !== null && typeof value === 'object' && !Array.isArray(value)) {
      Object.assign(fields, value);
    } else if (value !== undefined) {
      fields.value = value;
    }
    for (const [name, v] of entries) fields[name] = v;
    fields[OUTPUT_ID_ATTRIBUTE] = output.id;
    if (this.conditional) {
      fields[OUTPUT_ORDER_ATTRIBUTE] = outputOrder(output.id);
      if (depth !== undefined) fields[OUTPUT_RANK_ATTRIBUTE] = outputRank(output.id, depth);
    }
    const item: Record<string, AttributeValue> = Object.create(null);
    for (const [name, v] of Object.entries(fields)) {
      if (name.length === 0) continue; // DynamoDB rejects empty attribute names
      try {
        item[name] = toAttributeValue(v);
      } catch (error) {
        if (!(error instanceof SinkOutputError)) throw error;
        throw new SinkOutputError(
          `output ${output.id} to sink "${output.sink}" cannot be a DynamoDB item: attribute "${name}" holds a ${error.message}`,
          { outputId: output.id },
        );
      }
    }
    const size = itemSize(item);
    if (size > DYNAMODB_MAX_ITEM_BYTES) {
      throw new SinkOutputError(
        `output ${output.id} to sink "${output.sink}" makes a DynamoDB item of about ${size} bytes; the limit is ${DYNAMODB_MAX_ITEM_BYTES}: emit smaller values or use an S3 sink`,
        { outputId: output.id },
      );
    }
    const id = JSON.stringify(entries.sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)));
    return { id, item };
  }

  /**
   * What a failed `request` (PutItem, BatchWriteItem) raises: a rejected item (ValidationException:
   * wrong key attributes or types) a ConfigurationError, else mapError's mapping (transient ones
   * as TransientBackendError). A PutItem of one output whose key is too long (a sort key over
   * 1024 bytes: the sink does not know which attribute is the sort key) rejects that output.
   */
  private requestError(request: string, error: unknown, outputId?: string): unknown {
    if (errorName(error) === 'ValidationException') {
      const message = (error as Error).message;
      if (outputId !== undefined && KEY_TOO_LONG.test(message)) {
        return new SinkOutputError(
          `DynamoDB rejected output ${outputId} to table "${this.table}": ${message}`,
          { cause: error, outputId },
        );
      }
      return new ConfigurationError(
        `DynamoDB rejected a ${request} to table "${this.table}": ${(error as Error).message}; check that the key function returns exactly the table's key attributes with their types (S or N)`,
        { cause: error },
      );
    }
    return mapError(
      `${request} to DynamoDB table "${this.table}"`,
      error,
      'create the table or fix the sink configuration',
    );
  }

  /** One conditional PutItem; a failed condition (the stored item is later) skips the item. */
  private async put(item: Record<string, AttributeValue>): Promise<void> {
    const order = item[OUTPUT_ORDER_ATTRIBUTE]!.S!;
    const rank = item[OUTPUT_RANK_ATTRIBUTE]?.S;
    // Same shard (job generation and shard id): ordered by commit and index; another: written.
    const byOrder = 'NOT begins_with(#order, :source) OR #order <= :order';
    const orderValues: Record<string, AttributeValue> = {
      ':source': { S: order.slice(0, order.length - PADDED_PAIR_LENGTH) },
      ':order': { S: order },
    };
    const condition =
      rank === undefined
        ? { ConditionExpression: `attribute_not_exists(#order) OR ${byOrder}`, values: orderValues }
        : {
            // No floe item, another job's or a lower rank's: written. An item without a rank
            // (written by a version before ranks) or of our rank: ordered as above. A higher
            // rank of our job: skipped.
            ConditionExpression:
              'attribute_not_exists(#order) OR (attribute_exists(#rank) AND NOT begins_with(#rank, :job)) OR ' +
              `#rank < :rank OR ((attribute_not_exists(#rank) OR #rank = :rank) AND (${byOrder}))`,
            values: {
              ...orderValues,
              ':job': { S: rank.slice(0, rank.length - PADDED_PAIR_LENGTH) },
              ':rank': { S: rank },
            },
          };
    for (let attempt = 1; ; attempt++) {
      if (attempt > 1) await backoff(this.retry, attempt - 1);
      try {
        await this.client.send(
          new PutItemCommand({
            TableName: this.table,
            Item: item,
            ConditionExpression: condition.ConditionExpression,
            ExpressionAttributeNames: {
              '#order': OUTPUT_ORDER_ATTRIBUTE,
              ...(rank === undefined ? {} : { '#rank': OUTPUT_RANK_ATTRIBUTE }),
            },
            ExpressionAttributeValues: condition.values,
          }),
        );
        return;
      } catch (error) {
        if (errorName(error) === 'ConditionalCheckFailedException') return;
        const failure = this.requestError('PutItem', error, item[OUTPUT_ID_ATTRIBUTE]?.S);
        if (failure instanceof TransientBackendError) {
          if (attempt < this.retry.maxAttempts) continue;
          throw new TransientBackendError(
            `PutItem to DynamoDB table "${this.table}" did not complete after ${this.retry.maxAttempts} attempts (${failure.message}); the outputs stay unpublished and are retried by the next publish`,
            { cause: error },
          );
        }
        throw failure;
      }
    }
  }

  private async write(batch: WriteRequest[]): Promise<void> {
    let pending = batch;
    let lastError = '';
    for (let attempt = 1; attempt <= this.retry.maxAttempts; attempt++) {
      if (attempt > 1) await backoff(this.retry, attempt - 1);
      let unprocessed: WriteRequest[] | undefined;
      try {
        const res = await this.client.send(
          new BatchWriteItemCommand({ RequestItems: { [this.table]: pending } }),
        );
        unprocessed = res.UnprocessedItems?.[this.table];
      } catch (error) {
        const failure = this.requestError('BatchWriteItem', error);
        if (failure instanceof TransientBackendError && attempt < this.retry.maxAttempts) {
          lastError = failure.message;
          continue;
        }
        throw failure;
      }
      if (unprocessed === undefined || unprocessed.length === 0) return;
      lastError = `${unprocessed.length} unprocessed item(s)`;
      pending = unprocessed;
    }
    throw new TransientBackendError(
      `BatchWriteItem to DynamoDB table "${this.table}" did not complete after ${this.retry.maxAttempts} attempts (${lastError}); the outputs stay unpublished and are retried by the next publish`,
    );
  }
}

function validKey(key: unknown): [string, string | number][] | undefined {
  if (key === null || typeof key !== 'object' || Array.isArray(key)) return undefined;
  const entries = Object.entries(key as Record<string, unknown>);
  if (entries.length < 1 || entries.length > 2) return undefined;
  for (const [name, v] of entries) {
    if (name.length === 0) return undefined;
    if (typeof v === 'string' ? v.length === 0 : typeof v !== 'number' || !Number.isFinite(v)) {
      return undefined;
    }
  }
  return entries as [string, string | number][];
}

/** The smallest magnitude of a DynamoDB number other than 0. */
const DYNAMODB_MIN_MAGNITUDE = 1e-130;
/** The least double above DynamoDB's largest number (9.99...E+125, 38 digits): magnitudes must be below it. */
const DYNAMODB_MAX_MAGNITUDE = 1e126;

/**
 * Lists and maps one attribute may nest. DynamoDB stores 32 levels, the attribute itself being
 * the first, and answers a deeper item with ValidationException ("Nesting Levels have exceeded
 * supported limits"): 31 maps around a scalar are taken, 32 refused. (moto does not check it.)
 */
const DYNAMODB_MAX_NESTED_CONTAINERS = 31;

/**
 * Marshals a JSON value (as JSON.parse returns it) to a DynamoDB AttributeValue. What DynamoDB
 * would refuse in an item is a SinkOutputError: a number outside its range (magnitude over
 * 9.99E+125 or under 1E-130), or lists and maps nested over its 32 levels.
 */
export function toAttributeValue(value: unknown, containers = 0): AttributeValue {
  if (value === null || value === undefined) return { NULL: true };
  switch (typeof value) {
    case 'string':
      return { S: value };
    case 'number':
      if (
        value !== 0 &&
        !(Math.abs(value) >= DYNAMODB_MIN_MAGNITUDE && Math.abs(value) < DYNAMODB_MAX_MAGNITUDE)
      ) {
        // DynamoDB rejects the item (ValidationException: number overflow or underflow).
        throw new SinkOutputError(
          `number (${value}) outside DynamoDB's number range (magnitudes 1E-130 to 9.9999999999999999999999999999999999999E+125)`,
        );
      }
      return { N: String(value) };
    case 'boolean':
      return { BOOL: value };
    case 'object': {
      const depth = containers + 1;
      if (depth > DYNAMODB_MAX_NESTED_CONTAINERS) {
        throw new SinkOutputError(
          `value with lists or maps nested more than ${DYNAMODB_MAX_NESTED_CONTAINERS} deep; DynamoDB stores at most 32 levels in an attribute (the attribute is the first)`,
        );
      }
      if (Array.isArray(value)) return { L: value.map((v) => toAttributeValue(v, depth)) };
      const map: Record<string, AttributeValue> = Object.create(null);
      for (const [k, v] of Object.entries(value as Record<string, unknown>)) {
        if (v !== undefined) map[k] = toAttributeValue(v, depth);
      }
      return { M: map };
    }
    default:
      throw new StateSerializationError(`cannot store ${describeValue(value)} in DynamoDB`);
  }
}

/** Approximate stored size of an item (attribute names + values, DynamoDB's rules). */
function itemSize(item: Record<string, AttributeValue>): number {
  let size = 0;
  for (const [name, v] of Object.entries(item)) size += utf8Length(name) + attributeSize(v);
  return size;
}

function attributeSize(v: AttributeValue): number {
  if (v.S !== undefined) return utf8Length(v.S);
  if (v.N !== undefined) return Math.ceil(v.N.replace(/[^0-9]/g, '').length / 2) + 1;
  if (v.BOOL !== undefined || v.NULL !== undefined) return 1;
  if (v.L !== undefined) return 3 + v.L.reduce((n, x) => n + 1 + attributeSize(x), 0);
  if (v.M !== undefined) {
    return 3 + Object.entries(v.M).reduce((n, [k, x]) => n + 1 + utf8Length(k) + attributeSize(x), 0);
  }
  return 0;
}

// ---- S3 ----

export interface S3ObjectKeyParts extends OutputIdParts {
  readonly sink: string;
  readonly prefix: string;
}

export interface S3ObjectSinkOptions {
  readonly client: S3Client;
  readonly bucket: string;
  /** Prepended verbatim to every key: end it with '/' for a folder. @default '' */
  readonly prefix?: string;
  /**
   * The object key of one (sink, job, shard, commit). Must be a function of those parts only.
   * @default `${prefix}${sink}/${job}/${shard}/${commit padded to 12 digits}.ndjson`
   * (each segment URI-encoded), so keys sort in commit order.
   */
  readonly objectKey?: (parts: S3ObjectKeyParts) => string;
  /**
   * Read the existing object and merge its lines by id before writing (a retry that carries only
   * part of a commit's outputs then loses nothing). Off: one PUT per object, no GET. @default true
   */
  readonly merge?: boolean;
  /** Concurrent objects. @default 8 */
  readonly concurrency?: number;
}

const padCommit = (n: number): string => String(n).padStart(12, '0');

/** The default object key (see S3ObjectSinkOptions.objectKey). */
export function defaultS3ObjectKey(parts: S3ObjectKeyParts): string {
  const seg = encodeURIComponent;
  return `${parts.prefix}${seg(parts.sink)}/${seg(parts.job)}/${seg(parts.shard)}/${padCommit(parts.commit)}.ndjson`;
}

/**
 * Writes the outputs of each (sink, job, shard, commit) as one NDJSON object, one
 * `{"id","value"}` line per output in emission order. The key is derived from the output ids,
 * so a retry writes the same key with the same content; with `merge` (default) lines already in
 * the object are kept, so a partial republish loses nothing, and an unchanged object is not
 * rewritten. Works for any sink, including the dead-letter output (`floe.dead-letter`).
 */
export class S3ObjectSink implements Sink {
  readonly bucket: string;
  readonly prefix: string;
  private readonly client: S3Client;
  private readonly objectKey: (parts: S3ObjectKeyParts) => string;
  private readonly merge: boolean;
  private readonly concurrency: number;

  constructor(options: S3ObjectSinkOptions) {
    if (typeof options.bucket !== 'string' || options.bucket.length === 0) {
      throw new ConfigurationError(
        `S3ObjectSink needs a bucket name; received ${describeValue(options.bucket)}`,
      );
    }
    this.client = options.client;
    this.bucket = options.bucket;
    this.prefix = options.prefix ?? '';
    this.objectKey = options.objectKey ?? defaultS3ObjectKey;
    this.merge = options.merge ?? true;
    this.concurrency = Math.max(1, Math.floor(options.concurrency ?? 8));
  }

  /** The key of the object an output goes to. */
  keyOf(output: Output): string {
    return this.objectKey({ ...parseOutputId(output.id), sink: output.sink, prefix: this.prefix });
  }

  async publish(outputs: readonly Output[]): Promise<void> {
    if (outputs.length === 0) return;
    const objects = new Map<string, Line[]>();
    for (const o of outputs) {
      const parts = parseOutputId(o.id);
      const key = this.objectKey({ ...parts, sink: o.sink, prefix: this.prefix });
      let lines = objects.get(key);
      if (lines === undefined) {
        lines = [];
        objects.set(key, lines);
      }
      lines.push({ id: o.id, order: [parts.commit, parts.index], text: outputRecordJson(o) });
    }
    await forEachLimit([...objects], this.concurrency, ([key, lines]) => this.write(key, lines));
  }

  private async write(key: string, lines: Line[]): Promise<void> {
    const existing = this.merge ? await this.read(key) : undefined;
    const byId = new Map<string, Line>();
    if (existing !== undefined)
      for (const line of parseLines(existing, this.bucket, key)) byId.set(line.id, line);
    for (const line of lines) byId.set(line.id, line);
    const sorted = [...byId.values()].sort(compareLines);
    const body = `${sorted.map((l) => l.text).join('\n')}\n`;
    if (body === existing) return;
    try {
      await this.client.send(
        new PutObjectCommand({
          Bucket: this.bucket,
          Key: key,
          Body: body,
          ContentType: 'application/x-ndjson',
        }),
      );
    } catch (error) {
      throw mapError(
        `PutObject s3://${this.bucket}/${key}`,
        error,
        'create the bucket or fix the sink configuration',
      );
    }
  }

  private async read(key: string): Promise<string | undefined> {
    try {
      const res = await this.client.send(new GetObjectCommand({ Bucket: this.bucket, Key: key }));
      return (await res.Body?.transformToString('utf8')) ?? '';
    } catch (error) {
      const name = errorName(error);
      if (name === 'NoSuchKey' || name === 'NotFound') return undefined;
      throw mapError(
        `GetObject s3://${this.bucket}/${key}`,
        error,
        'create the bucket or fix the sink configuration',
      );
    }
  }
}

interface Line {
  readonly id: string;
  /** (commit, index) from the id; lines are written in this order. */
  readonly order: readonly [number, number];
  readonly text: string;
}

function compareLines(a: Line, b: Line): number {
  return a.order[0] - b.order[0] || a.order[1] - b.order[1] || (a.id < b.id ? -1 : a.id > b.id ? 1 : 0);
}

function parseLines(text: string, bucket: string, key: string): Line[] {
  const lines: Line[] = [];
  let n = 0;
  for (const raw of text.split('\n')) {
    n++;
    if (raw.trim().length === 0) continue;
    let id: unknown;
    try {
      id = (JSON.parse(raw) as { id?: unknown }).id;
    } catch (error) {
      throw new StateFormatError(
        `line ${n} of s3://${bucket}/${key} is not JSON (${String(error)}); fix or delete the object so the sink can rewrite it`,
      );
    }
    if (typeof id !== 'string') {
      throw new StateFormatError(
        `line ${n} of s3://${bucket}/${key} has no string "id"; fix or delete the object so the sink can rewrite it`,
      );
    }
    let order: [number, number];
    try {
      const parts = parseOutputId(id);
      order = [parts.commit, parts.index];
    } catch {
      order = [Number.MAX_SAFE_INTEGER, Number.MAX_SAFE_INTEGER];
    }
    lines.push({ id, order, text: raw });
  }
  return lines;
}

// ---- routing ----
