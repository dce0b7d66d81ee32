/**
 * Kinesis Data Streams as a floe ShardSource (@aws-sdk/client-kinesis, polling GetRecords), plus
 * `putRecords` for producers and tests.
 *
 * Reading: ListShards (paginated) gives the lineage; a reader holds a shard iterator and turns each
 * GetRecords into a ReadResult. Throttling and 5xx are retried with exponential backoff and jitter (then a
 * TransientBackendError); an expired iterator is re-requested after the last record fetched; the end of a
 * closed shard is reported with its children (ChildShards, else ListShards).
 *
 * Pacing: a shard allows 5 GetRecords per second, shared by every consumer of the stream, so GetRecords
 * calls on one shard are spaced by at least `minGetRecordsIntervalMs` (200 ms), and by
 * `throttledGetRecordsIntervalMs` (1 s) after a ProvisionedThroughputExceededException. This does not cost
 * throughput: each call but a reader's first asks for up to `getRecordsLimit` (10,000, the API maximum)
 * records and read(limit) serves the ones beyond `limit` from a buffer, so 5 calls a second can return
 * 50,000 records (the 2 MB/s per shard read quota usually binds first). A read given a deadline (ReadOptions.timeLeftMs) gives up
 * waiting and retrying at it, and returns an empty read that is not caught up.
 *
 * KPL aggregates are de-aggregated (./kpl.ts). Positions: every record gets a *position* that is its
 * Kinesis sequence number followed by a fixed-width sub-index of SUB_SEQUENCE_DIGITS digits:
 *
 *   plain record S                     ->  S + '9999999'
 *   aggregate S of n user records      ->  S + '0000000', S + '0000001', ..., S + '9999999' (the last)
 *
 * Every position of a shard has the same number of extra digits, so positions compare as decimal
 * integers exactly as (S, sub-index) do, which is what compareSequenceNumbers (length, then
 * lexicographic) computes. The last user record of a Kinesis record always ends in 9...9, so resuming
 * after it is a plain AFTER_SEQUENCE_NUMBER S; resuming after user record k < last of S reads
 * AT_SEQUENCE_NUMBER S and skips the user records up to k. Readers opened with AFTER_SEQUENCE_NUMBER
 * therefore take positions this source produced (a checkpoint), not raw Kinesis sequence numbers: use
 * `positionAfter(sequenceNumber)` for those, or `deaggregate: false` for raw sequence numbers throughout.
 */
import {
  ExpiredIteratorException,
  GetRecordsCommand,
  type GetRecordsCommandOutput,
  GetShardIteratorCommand,
  type GetShardIteratorCommandInput,
  type KinesisClient,
  type _Record as KinesisRecord,
  ListShardsCommand,
  type ListShardsCommandOutput,
  PutRecordsCommand,
  type PutRecordsRequestEntry,
} from '@aws-sdk/client-kinesis';
import {
  ConfigurationError,
  compareSequenceNumbers,
  describeValue,
  errorMessage,
  type ReadOptions,
  type ReadResult,
  type ShardInfo,
  type ShardReader,
  type ShardSource,
  type SourceRecord,
  type StartPosition,
  TransientBackendError,
} from '../core/index.ts';
import { deaggregate, effectiveHashKey, type KplUserRecord } from './kpl.ts';
import { BackoffDeadlineError, type BackoffOptions, backoffDelay, withBackoff } from './retry.ts';

// ---------------------------------------------------------------------------------------------
// Positions

/** Digits appended to a Kinesis sequence number to number the user records of an aggregate. */
export const SUB_SEQUENCE_DIGITS = 7;
/** The sub-index of the last (or only) user record of a Kinesis record: 9999999. */
export const LAST_SUB_INDEX = 10 ** SUB_SEQUENCE_DIGITS - 1;
/** GetRecords returns at most 10,000 records per call. */
const MAX_GET_RECORDS_LIMIT = 10_000;
/** KinesisSourceOptions.minGetRecordsIntervalMs by default: 5 calls a second, a shard's whole read quota. */
export const DEFAULT_MIN_GET_RECORDS_INTERVAL_MS = 200;
/** KinesisSourceOptions.throttledGetRecordsIntervalMs by default: the quota's one-second window. */
export const DEFAULT_THROTTLED_GET_RECORDS_INTERVAL_MS = 1_000;

/**
 * The position of user record `subIndex` of the Kinesis record `sequenceNumber`; 'last' for the last
 * user record of an aggregate or a record that is not aggregated.
 */
export function encodePosition(sequenceNumber: string, subIndex: number | 'last'): string {
  if (!/^[1-9]\d*$/.test(sequenceNumber)) {
    throw new ConfigurationError(
      `a Kinesis sequence number is a decimal integer; received ${describeValue(sequenceNumber)}`,
    );
  }
  const sub = subIndex === 'last' ? LAST_SUB_INDEX : subIndex;
  if (!Number.isInteger(sub) || sub < 0 || sub > LAST_SUB_INDEX) {
    throw new ConfigurationError(
      `a sub-record index is an integer in [0, ${LAST_SUB_INDEX}]; received ${describeValue(subIndex)}`,
    );
  }
  return `${sequenceNumber}${String(sub).padStart(SUB_SEQUENCE_DIGITS, '0')}`;
}

/** Splits a position of this source into the Kinesis sequence number and the sub-index. */
export function decodePosition(position: string): { sequenceNumber: string; subIndex: number | 'last' } {
  if (!/^[1-9]\d*$/.test(position) || position.length <= SUB_SEQUENCE_DIGITS) {
    throw new ConfigurationError(
      `a KinesisSource position is a Kinesis sequence number followed by ${SUB_SEQUENCE_DIGITS} sub-record digits; received ${describeValue(position)}. Positions come from the records this source returned (checkpoints); for a raw Kinesis sequence number use positionAfter(sequenceNumber)`,
    );
  }
  const sequenceNumber = position.slice(0, -SUB_SEQUENCE_DIGITS);
  const sub = Number(position.slice(-SUB_SEQUENCE_DIGITS));
  return { sequenceNumber, subIndex: sub === LAST_SUB_INDEX ? 'last' : sub };
}

/** The position just after the whole Kinesis record `sequenceNumber` (all its user records). */
export function positionAfter(sequenceNumber: string): string {
  return encodePosition(sequenceNumber, 'last');
}

// ---------------------------------------------------------------------------------------------
// Source

/** A record read from Kinesis: SourceRecord plus where it came from. */
export interface KinesisSourceRecord extends SourceRecord {
  readonly data: Uint8Array;
  /** The Kinesis record's own sequence number (the same for every user record of an aggregate). */
  readonly kinesisSequenceNumber: string;
  /** Index of the user record within a KPL aggregate; absent for a record that is not aggregated. */
  readonly subSequenceNumber?: number;
  /** The user record's explicit hash key (aggregates only; plain records do not return theirs). */
  readonly explicitHashKey?: string;
}

/** Things a reader or the source did that are worth a metric or a log line. */
export type KinesisSourceEvent =
  | { readonly type: 'retry'; readonly what: string; readonly attempt: number; readonly error: unknown }
  | { readonly type: 'iterator-expired'; readonly shardId: string; readonly resumeAfter: string | undefined }
  | {
      /** A read stopped waiting or retrying at its deadline and returned no records (not caught up). */
      readonly type: 'read-deadline';
      readonly shardId: string;
      readonly error: unknown;
    }
  | {
      /** An aggregate holding a user record outside the shard's hash-key range was dropped (KCL rule). */
      readonly type: 'aggregate-dropped';
      readonly shardId: string;
      readonly sequenceNumber: string;
      readonly userRecords: number;
    };

export interface KinesisSourceOptions {
  /** A client of the stream's region; against emulators built with NodeHttpHandler (HTTP/1.1). */
  readonly client: KinesisClient;
  /** Stream name, or stream ARN (`arn:...`). */
  readonly stream: string;
  /**
   * De-aggregate KPL aggregates and use the positions described at the top of this file. With false,
   * payloads are delivered as stored and positions are the raw Kinesis sequence numbers. @default true
   */
  readonly deaggregate?: boolean;
  /**
   * An aggregate with a user record whose hash key is outside the shard's range: 'drop' it whole, as the
   * KCL does (the KPL re-puts the user records of an aggregate that reached the wrong shard after a
   * reshard), or 'deliver' it (producers that aggregate across shards; keys then leave their shard).
   * @default 'drop'
   */
  readonly misroutedAggregates?: 'drop' | 'deliver';
  /** MaxResults of each ListShards page (AWS default and maximum: 1000 / 10000). */
  readonly listShardsPageSize?: number;
  /** Backoff of throttled / failed calls. */
  readonly retry?: BackoffOptions;
  /**
   * Least time between two GetRecords calls on one shard by this source (its readers of a shard share
   * it). A shard allows 5 GetRecords per second across all its consumers; 200 ms uses all of them, so
   * give each of n consumers of a stream n * 200 ms. @default 200
   */
  readonly minGetRecordsIntervalMs?: number;
  /**
   * Least time between a GetRecords that was throttled (ProvisionedThroughputExceededException) and the
   * next one on that shard, on top of the retry's backoff: the read quotas are per second. @default 1000
   */
  readonly throttledGetRecordsIntervalMs?: number;
  /**
   * Records asked for by each GetRecords (1 to 10,000), but the first of a reader, which asks for at most
   * the read's `limit`. Records beyond a read's `limit` are kept for the next reads, so a paced reader
   * still delivers up to 5 * this many records a second. @default 10_000
   */
  readonly getRecordsLimit?: number;
  /** Clock of the pacing and of read deadlines. @default Date.now */
  readonly clock?: () => number;
  /** Waits of the pacing (tests pass a fake); the backoff uses retry.sleep. @default setTimeout */
  readonly sleep?: (ms: number) => Promise<void>;
  readonly onEvent?: (event: KinesisSourceEvent) => void;
}

interface ShardRange {
  readonly start: bigint;
  readonly end: bigint;
}

export class KinesisSource implements ShardSource {
  private shardCache = new Map<string, ShardInfo>();
  /** Per shard, the earliest time (of `clock`) the next GetRecords may be sent. */
  private readonly nextGetRecordsAt = new Map<string, number>();
  private readonly minGetRecordsIntervalMs: number;
  private readonly throttledGetRecordsIntervalMs: number;
  /** @internal */
  readonly getRecordsLimit: number;
  /** @internal */
  readonly clock: () => number;
  private readonly sleep: (ms: number) => Promise<void>;

  constructor(private readonly options: KinesisSourceOptions) {
    if (typeof options.stream !== 'string' || options.stream.length === 0) {
      throw new ConfigurationError(
        `KinesisSource needs a stream name or ARN; received ${describeValue(options.stream)}`,
      );
    }
    this.minGetRecordsIntervalMs = wholeMillis(
      'minGetRecordsIntervalMs',
      options.minGetRecordsIntervalMs ?? DEFAULT_MIN_GET_RECORDS_INTERVAL_MS,
    );
    this.throttledGetRecordsIntervalMs = wholeMillis(
      'throttledGetRecordsIntervalMs',
      options.throttledGetRecordsIntervalMs ?? DEFAULT_THROTTLED_GET_RECORDS_INTERVAL_MS,
    );
    const limit = options.getRecordsLimit ?? MAX_GET_RECORDS_LIMIT;
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_GET_RECORDS_LIMIT) {
      throw new ConfigurationError(
        `KinesisSource getRecordsLimit must be a whole number in [1, ${MAX_GET_RECORDS_LIMIT}]; received ${describeValue(options.getRecordsLimit)}`,
      );
    }
    this.getRecordsLimit = limit;
    this.clock = options.clock ?? Date.now;
    this.sleep = options.sleep ?? ((ms) => new Promise<void>((resolve) => setTimeout(resolve, ms)));
  }

  /** The stream selector of a request: StreamARN for an ARN, else StreamName. */
  get streamRef(): { StreamName: string } | { StreamARN: string } {
    return streamRef(this.options.stream);
  }

  async listShards(): Promise<ShardInfo[]> {
    const shards: ShardInfo[] = [];
    let restarts = 0;
    let token: string | undefined;
    for (;;) {
      let out: ListShardsCommandOutput;
      try {
        out = await this.call(`ListShards of ${this.options.stream}`, () =>
          this.options.client.send(
            new ListShardsCommand({
              // A later page names the stream by its token alone: ListShards refuses StreamName
              // (or a creation timestamp) beside a NextToken.
              ...(token !== undefined ? { NextToken: token } : this.streamRef),
              ...(this.options.listShardsPageSize !== undefined
                ? { MaxResults: this.options.listShardsPageSize }
                : {}),
            }),
          ),
        );
      } catch (error) {
        // A NextToken lives 300 s; a listing that slow starts over.
        if (errorName(error) === 'ExpiredNextTokenException' && restarts++ < 3) {
          shards.length = 0;
          token = undefined;
          continue;
        }
        throw this.terminal(error, `listing the shards of stream ${this.options.stream}`);
      }
      for (const s of out.Shards ?? []) {
        if (s.ShardId === undefined) continue;
        shards.push({
          shardId: s.ShardId,
          parentShardIds: [s.ParentShardId, s.AdjacentParentShardId].filter((p): p is string => !!p),
          hashKeyRange: {
            start: s.HashKeyRange?.StartingHashKey ?? '0',
            end: s.HashKeyRange?.EndingHashKey ?? ((1n << 128n) - 1n).toString(),
          },
          closed: s.SequenceNumberRange?.EndingSequenceNumber !== undefined,
        });
      }
      token = out.NextToken;
      if (token === undefined) break;
    }
    this.shardCache = new Map(shards.map((s) => [s.shardId, s]));
    return shards;
  }

  async openReader(shardId: string, position: StartPosition): Promise<KinesisShardReader> {
    const deagg = this.options.deaggregate ?? true;
    let range: ShardRange | undefined;
    if (deagg && (this.options.misroutedAggregates ?? 'drop') === 'drop') {
      const info = await this.shardInfo(shardId);
      range = { start: BigInt(info.hashKeyRange.start), end: BigInt(info.hashKeyRange.end) };
    }
    const reader = new KinesisShardReader(this, shardId, position, deagg, range);
    await reader.start();
    return reader;
  }

  /** The cached ShardInfo of a shard, listing the shards again if it is not known yet. */
  async shardInfo(shardId: string): Promise<ShardInfo> {
    const cached = this.shardCache.get(shardId);
    if (cached !== undefined) return cached;
    await this.listShards();
    const info = this.shardCache.get(shardId);
    if (info === undefined) {
      throw new ConfigurationError(
        `stream ${this.options.stream} has no shard ${shardId} (shards: ${[...this.shardCache.keys()].join(', ') || 'none'}); it may be past the retention period`,
      );
    }
    return info;
  }

  /** @internal */
  get client(): KinesisClient {
    return this.options.client;
  }

  /** @internal */
  get stream(): string {
    return this.options.stream;
  }

  /** @internal */
  emit(event: KinesisSourceEvent): void {
    this.options.onEvent?.(event);
  }

  /** @internal Runs one SDK call with the source's backoff, retrying only until `deadline` if given. */
  call<T>(what: string, fn: () => Promise<T>, deadline?: number): Promise<T> {
    return withBackoff(what, fn, {
      clock: this.clock,
      ...this.options.retry,
      ...(deadline === undefined ? {} : { deadline }),
      onRetry: (info) => {
        this.options.retry?.onRetry?.(info);
        this.emit({ type: 'retry', what: info.what, attempt: info.attempt, error: info.error });
      },
    });
  }

  /** @internal Sleeps until `time` of the source's clock. */
  async waitUntil(time: number): Promise<void> {
    const wait = time - this.clock();
    if (wait > 0) await this.sleep(wait);
  }

  /**
   * @internal One GetRecords attempt on `shardId`, sent no sooner than the pacing allows. Waiting past
   * `deadline` is not done: a BackoffDeadlineError instead.
   */
  async paced<T>(
    shardId: string,
    what: string,
    deadline: number | undefined,
    send: () => Promise<T>,
  ): Promise<T> {
    // A loop: another reader of the shard may have taken the slot while this one slept.
    for (;;) {
      const now = this.clock();
      const wait = (this.nextGetRecordsAt.get(shardId) ?? now) - now;
      if (wait <= 0) break;
      if (deadline !== undefined && now + wait > deadline) {
        throw new BackoffDeadlineError(
          `${what} would wait ${wait} ms for the shard's read quota, past the caller's deadline`,
        );
      }
      await this.sleep(wait);
    }
    // Kinesis counts a transaction when it receives it: the interval runs from the moment it is sent.
    const sending = send();
    this.nextGetRecordsAt.set(shardId, this.clock() + this.minGetRecordsIntervalMs);
    try {
      return await sending;
    } catch (error) {
      if (errorName(error) === 'ProvisionedThroughputExceededException') {
        const at = this.clock() + this.throttledGetRecordsIntervalMs;
        this.nextGetRecordsAt.set(shardId, Math.max(at, this.nextGetRecordsAt.get(shardId) ?? at));
      }
      throw error;
    }
  }

  /** @internal Terminal errors (unknown stream or shard, bad arguments) become ConfigurationErrors. */
  terminal(error: unknown, doing: string): unknown {
    const name = errorName(error);
    if (name === 'ResourceNotFoundException' || name === 'InvalidArgumentException') {
      return new ConfigurationError(
        `${doing}: ${errorMessage(error)}; check the stream name/ARN, the region and the shard id, and that the position comes from this stream`,
        { cause: error },
      );
    }
    return error;
  }
}

/** Reads one shard. Created by KinesisSource.openReader. */
export class KinesisShardReader implements ShardReader {
  private iterator: string | undefined;
  private ended = false;
  private childShardIds: readonly string[] = [];
  private buffer: KinesisSourceRecord[] = [];
  private millisBehindLatest = 0;
  /** Raw sequence number of the last Kinesis record fetched (the iterator is just after it). */
  private lastFetched: string | undefined;
  /** Skip records at or before this position (resuming inside an aggregate). */
  private skipThrough: string | undefined;
  private closed = false;
  /** GetRecords calls made by this reader (retries not counted). */
  private getRecordsCalls = 0;
  private readonly request: Omit<GetShardIteratorCommandInput, 'StreamName' | 'StreamARN'>;
  /** Number of ExpiredIteratorException recoveries so far. */
  expiredIteratorRecoveries = 0;
  /** Number of aggregates dropped because a user record was outside the shard's range. */
  droppedAggregates = 0;

  constructor(
    private readonly source: KinesisSource,
    readonly shardId: string,
    readonly position: StartPosition,
    private readonly deagg: boolean,
    private readonly range: ShardRange | undefined,
  ) {
    this.request = this.iteratorRequest(position);
  }

  /** @internal Gets the first iterator (so a bad shard or position fails at open). */
  async start(): Promise<void> {
    this.iterator = await this.getIterator(this.request);
  }

  /**
   * `options.timeLeftMs`: the read's deadline is that long after it starts; when the pacing or a
   * retry would wait past it, the read returns at the deadline with no records and
   * millisBehindLatest > 0 (not caught up, so an idle-shard watermark does not advance). A call
   * already sent is not cut short. Relative, so that the caller's clock (a job's may be a test's
   * fake) need not be the source's.
   */
  async read(limit: number, options: ReadOptions = {}): Promise<ReadResult> {
    if (!Number.isInteger(limit) || limit < 1) {
      throw new ConfigurationError(`read(limit) needs a positive integer; received ${describeValue(limit)}`);
    }
    if (this.closed) throw new ConfigurationError(`the reader of shard ${this.shardId} is closed`);
    const timeLeft = options.timeLeftMs;
    if (timeLeft !== undefined && Number.isNaN(timeLeft)) {
      throw new ConfigurationError(`read(limit, { timeLeftMs }) needs a number; received NaN`);
    }
    const deadline = timeLeft === undefined ? undefined : this.source.clock() + timeLeft;
    // A response whose records were all skipped (resume inside an aggregate, dropped aggregates) is
    // followed by another GetRecords, a few times, rather than reported as an empty read.
    try {
      for (let calls = 0; this.buffer.length === 0 && !this.ended && calls < 3; calls++) {
        // A reader's first call asks for no more than the read wants: a reader opened to peek at the
        // next record (status, savepoints) reads one, not 10 MB of the shard's 2 MB/s read quota.
        const fetchLimit =
          this.getRecordsCalls++ === 0
            ? Math.min(limit, this.source.getRecordsLimit)
            : this.source.getRecordsLimit;
        const fetched = await this.fetch(fetchLimit, deadline);
        if (fetched === 0) break;
      }
    } catch (error) {
      if (!(error instanceof BackoffDeadlineError)) throw error;
      // Out of time while paced or throttled: nothing was consumed (the iterator did not move), so
      // report an empty read that is behind, not caught up. The caller can then commit what it has and
      // end in time instead of failing; an idle-shard watermark must not advance on it.
      // It returns at the deadline, not before: a caller that went on reading would only spin.
      this.source.emit({ type: 'read-deadline', shardId: this.shardId, error });
      if (deadline !== undefined) await this.source.waitUntil(deadline);
      return { records: [], millisBehindLatest: Math.max(1, this.millisBehindLatest), shardEnded: false };
    }
    return this.take(limit);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.buffer = [];
  }

  private take(limit: number): ReadResult {
    const records = this.buffer.length <= limit ? this.buffer : this.buffer.slice(0, limit);
    this.buffer = this.buffer.length <= limit ? [] : this.buffer.slice(limit);
    const shardEnded = this.ended && this.buffer.length === 0;
    return {
      records,
      millisBehindLatest:
        this.buffer.length > 0 ? Math.max(1, this.millisBehindLatest) : this.millisBehindLatest,
      shardEnded,
      ...(shardEnded ? { childShardIds: this.childShardIds } : {}),
    };
  }

  /** One GetRecords (recovering an expired iterator); returns the number of Kinesis records fetched. */
  private async fetch(limit: number, deadline: number | undefined): Promise<number> {
    let out: GetRecordsCommandOutput | undefined;
    const what = `GetRecords on ${this.source.stream}/${this.shardId}`;
    for (let expiries = 0; out === undefined; ) {
      const iterator = this.iterator;
      if (iterator === undefined) throw new Error(`internal: shard ${this.shardId} has no iterator`);
      try {
        // Every attempt, retries included, is paced.
        out = await this.source.call(
          what,
          () =>
            this.source.paced(this.shardId, what, deadline, () =>
              this.source.client.send(new GetRecordsCommand({ ShardIterator: iterator, Limit: limit })),
            ),
          deadline,
        );
      } catch (error) {
        if (!isExpiredIterator(error)) throw this.source.terminal(error, `reading shard ${this.shardId}`);
        if (++expiries > 3) {
          throw new TransientBackendError(
            `the shard iterator of ${this.source.stream}/${this.shardId} expired ${expiries} times in a row; the clock or the network is too slow: retry later`,
            { cause: error },
          );
        }
        await this.recoverIterator(deadline);
      }
    }
    const records = out.Records ?? [];
    for (const r of records) this.accept(r);
    this.millisBehindLatest = out.MillisBehindLatest ?? 0;
    this.iterator = out.NextShardIterator ?? undefined;
    if (this.iterator === undefined) {
      this.ended = true;
      this.childShardIds =
        out.ChildShards !== undefined
          ? out.ChildShards.map((c) => c.ShardId).filter((id): id is string => id !== undefined)
          : await this.childrenFromListing();
    }
    return records.length;
  }

  private async recoverIterator(deadline: number | undefined): Promise<void> {
    this.expiredIteratorRecoveries++;
    const resumeAfter = this.lastFetched;
    this.source.emit({ type: 'iterator-expired', shardId: this.shardId, resumeAfter });
    this.iterator = await this.getIterator(
      resumeAfter !== undefined
        ? {
            ShardId: this.shardId,
            ShardIteratorType: 'AFTER_SEQUENCE_NUMBER',
            StartingSequenceNumber: resumeAfter,
          }
        : this.request,
      deadline,
    );
  }

  private async childrenFromListing(): Promise<string[]> {
    const shards = await this.source.listShards();
    return shards.filter((s) => s.parentShardIds.includes(this.shardId)).map((s) => s.shardId);
  }

  private accept(r: KinesisRecord): void {
    const sequenceNumber = r.SequenceNumber;
    if (sequenceNumber === undefined) return;
    this.lastFetched = sequenceNumber;
    const data = r.Data ?? new Uint8Array(0);
    const partitionKey = r.PartitionKey ?? '';
    const arrivalTime = r.ApproximateArrivalTimestamp?.getTime() ?? Date.now();
    if (!this.deagg) {
      this.buffer.push({
        data,
        partitionKey,
        sequenceNumber,
        arrivalTime,
        kinesisSequenceNumber: sequenceNumber,
      });
      return;
    }
    const users = deaggregate(data);
    let out: KinesisSourceRecord[];
    if (users === undefined) {
      out = [
        {
          data,
          partitionKey,
          sequenceNumber: encodePosition(sequenceNumber, 'last'),
          arrivalTime,
          kinesisSequenceNumber: sequenceNumber,
        },
      ];
    } else {
      if (this.isMisrouted(users)) {
        this.droppedAggregates++;
        this.source.emit({
          type: 'aggregate-dropped',
          shardId: this.shardId,
          sequenceNumber,
          userRecords: users.length,
        });
        return;
      }
      if (users.length - 1 >= LAST_SUB_INDEX) {
        throw new Error(
          `internal: aggregate ${sequenceNumber} has ${users.length} user records; positions number at most ${LAST_SUB_INDEX}`,
        );
      }
      out = users.map((u, i) => ({
        data: u.data,
        partitionKey: u.partitionKey,
        sequenceNumber: encodePosition(sequenceNumber, i === users.length - 1 ? 'last' : i),
        arrivalTime,
        kinesisSequenceNumber: sequenceNumber,
        subSequenceNumber: i,
        ...(u.explicitHashKey !== undefined ? { explicitHashKey: u.explicitHashKey } : {}),
      }));
    }
    const skip = this.skipThrough;
    if (skip !== undefined) {
      out = out.filter((rec) => compareSequenceNumbers(rec.sequenceNumber, skip) > 0);
      if (compareSequenceNumbers(encodePosition(sequenceNumber, 'last'), skip) >= 0)
        this.skipThrough = undefined;
    }
    for (const rec of out) this.buffer.push(rec);
  }

  private isMisrouted(users: readonly KplUserRecord[]): boolean {
    const range = this.range;
    if (range === undefined) return false;
    return users.some((u) => {
      const h = effectiveHashKey(u);
      return h < range.start || h > range.end;
    });
  }

  private iteratorRequest(
    position: StartPosition,
  ): Omit<GetShardIteratorCommandInput, 'StreamName' | 'StreamARN'> {
    const base = { ShardId: this.shardId };
    switch (position.type) {
      case 'TRIM_HORIZON':
      case 'LATEST':
        return { ...base, ShardIteratorType: position.type };
      case 'AT_TIMESTAMP':
        if (!Number.isFinite(position.timestamp)) {
          throw new ConfigurationError(
            `AT_TIMESTAMP needs a finite epoch-millisecond timestamp; received ${describeValue(position.timestamp)}`,
          );
        }
        return { ...base, ShardIteratorType: 'AT_TIMESTAMP', Timestamp: new Date(position.timestamp) };
      case 'AFTER_SEQUENCE_NUMBER': {
        if (!this.deagg) {
          return {
            ...base,
            ShardIteratorType: 'AFTER_SEQUENCE_NUMBER',
            StartingSequenceNumber: position.sequenceNumber,
          };
        }
        const { sequenceNumber, subIndex } = decodePosition(position.sequenceNumber);
        if (subIndex === 'last') {
          return {
            ...base,
            ShardIteratorType: 'AFTER_SEQUENCE_NUMBER',
            StartingSequenceNumber: sequenceNumber,
          };
        }
        // Inside an aggregate: read that record again and skip the user records already processed.
        this.skipThrough = position.sequenceNumber;
        return { ...base, ShardIteratorType: 'AT_SEQUENCE_NUMBER', StartingSequenceNumber: sequenceNumber };
      }
      default:
        throw new ConfigurationError(`unknown start position ${describeValue(position)}`);
    }
  }

  private async getIterator(
    request: Omit<GetShardIteratorCommandInput, 'StreamName' | 'StreamARN'>,
    deadline?: number,
  ): Promise<string> {
    const what = `GetShardIterator ${request.ShardIteratorType} on ${this.source.stream}/${this.shardId}`;
    try {
      const out = await this.source.call(
        what,
        () => this.source.client.send(new GetShardIteratorCommand({ ...request, ...this.source.streamRef })),
        deadline,
      );
      if (out.ShardIterator === undefined) {
        throw new TransientBackendError(`${what} returned no iterator`);
      }
      return out.ShardIterator;
    } catch (error) {
      throw this.source.terminal(error, `opening shard ${this.shardId} at ${describeValue(this.position)}`);
    }
  }
}

function wholeMillis(name: string, value: number): number {
  if (!Number.isInteger(value) || value < 0) {
    throw new ConfigurationError(
      `KinesisSource ${name} must be a whole number of milliseconds >= 0; received ${describeValue(value)}`,
    );
  }
  return value;
}

function isExpiredIterator(error: unknown): boolean {
  return error instanceof ExpiredIteratorException || errorName(error) === 'ExpiredIteratorException';
}

function errorName(error: unknown): string | undefined {
  return typeof error === 'object' && error !== null ? (error as { name?: string }).name : undefined;
}

function streamRef(stream: string): { StreamName: string } | { StreamARN: string } {
  return stream.startsWith('arn:') ? { StreamARN: stream } : { StreamName: stream };
}

// ---------------------------------------------------------------------------------------------
// Producing

export interface PutRecordInput {
  readonly partitionKey: string;
  /** Bytes, or a string sent as UTF-8. */
  readonly data: Uint8Array | string;
  readonly explicitHashKey?: string;
}

export interface PutRecordOutcome {
  readonly shardId: string;
  readonly sequenceNumber: string;
}

export interface PutRecordsOptions extends BackoffOptions {
  /** Records per PutRecords call (AWS: at most 500). @default 500 */
  readonly maxBatchRecords?: number;
  /** Bytes of data and partition keys per call (AWS: at most 5 MiB). @default 5 MiB */
  readonly maxBatchBytes?: number;
}

/** Per-record error codes of PutRecords that a retry can fix. */
const RETRYABLE_PUT_CODES = new Set([
  'ProvisionedThroughputExceededException',
  'InternalFailure',
  'InternalFailureException',
  'KMSThrottlingException',
  'ServiceUnavailable',
]);

const encoder = new TextEncoder();

/**
 * Puts records with PutRecords in batches (<= 500 records, <= 5 MiB of data and partition keys each, in
 * input order, one call at a time), retrying throttled calls and the failed records of partial failures
 * with backoff. Returns where each record went, in input order. A record retried after a partial
 * failure lands after the ones that succeeded in its call, so per-key order holds only when no record
 * of the key is retried: producers that need strict order put one record per key per call.
 * Throws TransientBackendError when retries run out, ConfigurationError for a non-retryable rejection.
 */
export async function putRecords(
  client: KinesisClient,
  stream: string,
  records: readonly PutRecordInput[],
  options: PutRecordsOptions = {},
): Promise<PutRecordOutcome[]> {
  const maxRecords = Math.min(options.maxBatchRecords ?? 500, 500);
  const maxBytes = options.maxBatchBytes ?? 5 * 1024 * 1024;
  const entries: PutRecordsRequestEntry[] = records.map((r) => ({
    PartitionKey: r.partitionKey,
    Data: typeof r.data === 'string' ? encoder.encode(r.data) : r.data,
    ...(r.explicitHashKey !== undefined ? { ExplicitHashKey: r.explicitHashKey } : {}),
  }));
  const results: (PutRecordOutcome | undefined)[] = new Array(records.length).fill(undefined);
  let batch: number[] = [];
  let batchBytes = 0;
  const flush = async () => {
    if (batch.length > 0) await putBatch(client, stream, entries, batch, results, options);
    batch = [];
    batchBytes = 0;
  };
  for (let i = 0; i < entries.length; i++) {
    const e = entries[i]!;
    const size = (e.Data?.byteLength ?? 0) + encoder.encode(e.PartitionKey ?? '').byteLength;
    if (batch.length > 0 && (batch.length >= maxRecords || batchBytes + size > maxBytes)) await flush();
    batch.push(i);
    batchBytes += size;
  }
  await flush();
  return results.map((r, i) => {
    if (r === undefined) throw new Error(`internal: record ${i} was not put`);
    return r;
  });
}

async function putBatch(
  client: KinesisClient,
  stream: string,
  entries: readonly PutRecordsRequestEntry[],
  indices: readonly number[],
  results: (PutRecordOutcome | undefined)[],
  options: PutRecordsOptions,
): Promise<void> {
  let pending = [...indices];
  const maxRetries = options.maxRetries ?? 8;
  for (let round = 0; ; round++) {
    const sending = pending;
    const out = await withBackoff(
      `PutRecords of ${sending.length} records to ${stream}`,
      () =>
        client.send(
          new PutRecordsCommand({ ...streamRef(stream), Records: sending.map((i) => entries[i]!) }),
        ),
      options,
    ).catch((error: unknown) => {
      const name = errorName(error);
      if (name === 'ResourceNotFoundException' || name === 'InvalidArgumentException') {
        throw new ConfigurationError(`PutRecords to ${stream} was rejected: ${errorMessage(error)}`, {
          cause: error,
        });
      }
      throw error;
    });
    const failed: number[] = [];
    const codes = new Set<string>();
    (out.Records ?? []).forEach((r, k) => {
      const index = sending[k]!;
      if (r.ErrorCode === undefined && r.SequenceNumber !== undefined && r.ShardId !== undefined) {
        results[index] = { shardId: r.ShardId, sequenceNumber: r.SequenceNumber };
        return;
      }
      const code = r.ErrorCode ?? 'MissingResult';
      if (!RETRYABLE_PUT_CODES.has(code) && code !== 'MissingResult') {
        throw new ConfigurationError(
          `PutRecords to ${stream} rejected record ${index} with ${code}: ${r.ErrorMessage ?? ''}`,
        );
      }
      codes.add(code);
      failed.push(index);
    });
    // Entries missing from the response (should not happen) are retried too.
    for (let k = out.Records?.length ?? 0; k < sending.length; k++) failed.push(sending[k]!);
    if (failed.length === 0) return;
    if (round >= maxRetries) {
      throw new TransientBackendError(
        `PutRecords to ${stream}: ${failed.length} records still failed after ${round + 1} attempts (${[...codes].join(', ')}); the stream is throttling: retry later or add shards`,
      );
    }
    pending = failed;
    const delayMs = backoffDelay(round + 1, options);
    options.onRetry?.({
      what: `PutRecords of ${failed.length} failed records`,
      attempt: round + 1,
      delayMs,
      error: [...codes],
    });
    await (options.sleep ?? ((ms: number) => new Promise<void>((r) => setTimeout(r, ms))))(delayMs);
  }
}
