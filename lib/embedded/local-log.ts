/**
 * A local sharded log in SQLite, with Kinesis semantics: a stream has shards owning equal
 * ranges of the MD5 hash-key space, each record goes to the shard owning the hash of its
 * partition key, sequence numbers increase (decimal strings, fixed width), records carry an
 * arrival time and are trimmed after the stream's retention. Resharding closes the open shards
 * and opens children with parent lineage. `source(stream)` gives the ShardSource the workers
 * read with (TRIM_HORIZON, LATEST, AT_TIMESTAMP, AFTER_SEQUENCE_NUMBER).
 *
 * The file may be shared with the SQLite backend and with other processes (WAL mode).
 */
import { ConfigurationError, describeValue, TerminalError } from '../core/errors.ts';
import { hashKey, hashRange, shardIndexFor, shardName } from '../core/partitioning.ts';
import type {
  ReadResult,
  ShardInfo,
  ShardReader,
  ShardSource,
  SourceRecord,
  StartPosition,
} from '../core/ports.ts';
import { checkStreamName } from '../core/stream-name.ts';
import { ensureSchema } from './schema.ts';
import { openSqlite, retryIfBusy, type SqliteDatabase, type SqliteOpenOptions } from './sqlite.ts';

export const LOCAL_LOG_SCHEMA_VERSION = 1;

/** Digits of a sequence number: they compare as strings and as decimal integers alike. */
export const SEQUENCE_NUMBER_DIGITS = 20;
/** Kinesis' default retention: 24 hours. */
export const DEFAULT_RETENTION_MS = 24 * 60 * 60 * 1000;
/** Kinesis' limits on a record. */
export const MAX_PARTITION_KEY_LENGTH = 256;
export const MAX_RECORD_BYTES = 1024 * 1024;
/** Most records one read returns (GetRecords' limit). */
export const MAX_READ_LIMIT = 10_000;
export const MAX_SHARDS = 1024;

const DDL = `
CREATE TABLE IF NOT EXISTS floe_log_stream (
  name TEXT PRIMARY KEY, retention_ms INTEGER, created_at INTEGER NOT NULL,
  last_arrival INTEGER NOT NULL, next_shard INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS floe_log_shard (
  stream TEXT NOT NULL, shard_id TEXT NOT NULL, idx INTEGER NOT NULL,
  hash_start TEXT NOT NULL, hash_end TEXT NOT NULL, parents TEXT NOT NULL,
  closed_at INTEGER, trimmed_through INTEGER NOT NULL DEFAULT 0, deleted INTEGER NOT NULL DEFAULT 0,
  PRIMARY KEY (stream, shard_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS floe_log_record (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  stream TEXT NOT NULL, shard_id TEXT NOT NULL,
  partition_key TEXT NOT NULL, data BLOB NOT NULL, arrival INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS floe_log_record_shard ON floe_log_record (stream, shard_id, seq);
CREATE INDEX IF NOT EXISTS floe_log_record_arrival ON floe_log_record (stream, shard_id, arrival);
`;

/**
 * Reading from a position whose following records were already trimmed by retention: those
 * records are lost to this reader (and to a savepoint taken before that position). Accept the
 * loss by reading with `onTrimmed: 'skip'` (or from TRIM_HORIZON); the CLI's way is
 * `floe replay --from-timestamp`, which `floe run`'s user can reach.
 */
export class TrimmedPositionError extends TerminalError {
  readonly code = 'TRIMMED_POSITION';

  constructor(
    readonly stream: string,
    readonly shardId: string,
    /** The reader's position (last sequence number read or checkpointed). */
    readonly position: string,
    /** Every record of the shard up to this sequence number was trimmed. */
    readonly trimmedThrough: string,
  ) {
    super(
      `records of shard ${shardId} of stream "${stream}" after position ${position} were trimmed by the stream's retention (trimmed through ${trimmedThrough}), so they cannot be processed: the job cannot resume from its checkpoint, nor from a savepoint taken before it. To go on, accepting the loss, start the job again from the oldest record kept, with empty state ('floe replay --from-timestamp <time> --pipeline <module.ts>'), or, through the API, read with onTrimmed: 'skip' (the job keeps its state).`,
    );
  }
}

export interface LocalLogOptions extends SqliteOpenOptions {
  /** Wall clock for arrival times and retention. @default Date.now */
  readonly clock?: () => number;
}

export interface CreateStreamOptions {
  /** Number of shards (equal hash-key ranges), 1 to 1024. */
  readonly shards: number;
  /** Records older than this (by arrival time) are trimmed; Infinity keeps them. @default 24 h */
  readonly retentionMs?: number;
}

export interface StreamDescription {
  readonly name: string;
  /** Undefined: records are kept forever. */
  readonly retentionMs: number | undefined;
  readonly createdAt: number;
  /** Every listed shard, open and closed, parents before children. */
  readonly shards: readonly ShardInfo[];
  readonly openShardCount: number;
  /** Records currently stored (not trimmed). */
  readonly records: number;
}

export interface AppendRecord {
  readonly partitionKey: string;
  /** Bytes, or text written as UTF-8. */
  readonly data: Uint8Array | string;
  /**
   * Arrival time (epoch ms), for replaying or generating history. @default the log's clock.
   * Arrival times never decrease within a stream: an earlier one is raised to the latest.
   */
  readonly arrivalTime?: number;
}

export interface AppendResult {
  readonly shardId: string;
  readonly sequenceNumber: string;
}

export interface LocalLogSourceOptions {
  /**
   * What a reader does when records after its position were trimmed: `throw` a
   * TrimmedPositionError (default), or `skip` to the oldest available record.
   */
  readonly onTrimmed?: 'throw' | 'skip';
}

interface StreamRow {
  name: string;
  retention_ms: number | null;
  created_at: number;
  last_arrival: number;
  next_shard: number;
}

interface ShardRow {
  shard_id: string;
  idx: number;
  hash_start: string;
  hash_end: string;
  parents: string;
  closed_at: number | null;
  trimmed_through: number;
  deleted: number;
}

interface RecordRow {
  seq: number;
  partition_key: string;
  data: Buffer;
  arrival: number;
}

const encoder = new TextEncoder();

/** Formats a sequence number: fixed width, so string order is numeric order. */
export function formatSequenceNumber(seq: number | bigint): string {
  return String(seq).padStart(SEQUENCE_NUMBER_DIGITS, '0');
}

export class LocalLog {
  private readonly clock: () => number;
  private closed = false;
  private readonly sql: ReturnType<typeof prepareStatements>;

  /** Uses an open database; the caller owns it (close() leaves it open). */
  constructor(
    readonly db: SqliteDatabase,
    options: { readonly clock?: () => number } = {},
    private readonly ownsDatabase = false,
  ) {
    this.clock = options.clock ?? Date.now;
    ensureSchema(db, 'log', LOCAL_LOG_SCHEMA_VERSION, DDL);
    this.sql = prepareStatements(db);
  }

  /** Opens (or creates) the SQLite file at `path`. */
  static open(path: string, options: LocalLogOptions = {}): LocalLog {
    const db = openSqlite(path, options);
    try {
      return new LocalLog(db, options, true);
    } catch (error) {
      db.close();
      throw error;
    }
  }

  /** Creates a stream; throws ConfigurationError if it exists (see ensureStream). */
  async createStream(name: string, options: CreateStreamOptions): Promise<StreamDescription> {
    this.assertOpen();
    checkStreamName(name);
    const shards = checkShardCount(options.shards);
    const retention = checkRetention(options.retentionMs);
    this.db
      .transaction(() => {
        if (this.sql.getStream.get(name) !== undefined) {
          throw new ConfigurationError(
            `stream "${name}" already exists; use describeStream, ensureStream, or choose another name`,
          );
        }
        const now = this.clock();
        this.sql.insertStream.run(name, retention, now, 0, shards);
        for (let i = 0; i < shards; i++) this.insertShard(name, i, i, shards, []);
      })
      .immediate();
    return this.describe(name);
  }

  /** Creates the stream if it does not exist; an existing stream is left as it is. */
  async ensureStream(name: string, options: CreateStreamOptions): Promise<StreamDescription> {
    this.assertOpen();
    if (this.sql.getStream.get(name) !== undefined) return this.describe(name);
    try {
      return await this.createStream(name, options);
    } catch (error) {
      // Another process may have created it in between.
      if (error instanceof ConfigurationError && this.sql.getStream.get(name) !== undefined) {
        return this.describe(name);
      }
      throw error;
    }
  }

  async describeStream(name: string): Promise<StreamDescription> {
    this.assertOpen();
    return this.describe(name);
  }

  async listStreams(): Promise<string[]> {
    this.assertOpen();
    return this.sql.listStreams.all().map((r) => r.name);
  }

  /** Removes a stream and its records. Throws ConfigurationError if it does not exist. */
  async deleteStream(name: string): Promise<void> {
    this.assertOpen();
    this.db
      .transaction(() => {
        this.stream(name);
        this.sql.deleteRecords.run(name);
        this.sql.deleteShards.run(name);
        this.sql.deleteStream.run(name);
      })
      .immediate();
  }

  /**
   * Reshards to `shards` equal ranges: every open shard is closed (it keeps its records until
   * retention trims them) and new shards open, each listing the closed shards whose hash-key
   * ranges overlap its own as parents.
   */
  async updateShardCount(name: string, shards: number): Promise<StreamDescription> {
    this.assertOpen();
    const count = checkShardCount(shards);
    this.db
      .transaction(() => {
        const stream = this.stream(name);
        const now = this.clock();
        const open = this.openShards(name);
        for (const s of open) this.sql.closeShard.run(now, name, s.shard_id);
        for (let i = 0; i < count; i++) {
          const range = hashRange(i, count);
          const parents = open
            .filter((p) => BigInt(p.hash_start) <= range.end && BigInt(p.hash_end) >= range.start)
            .map((p) => p.shard_id);
          this.insertShard(name, stream.next_shard + i, i, count, parents);
        }
        this.sql.setNextShard.run(stream.next_shard + count, name);
      })
      .immediate();
    return this.describe(name);
  }

  /**
   * Appends records (in order) to the shards owning their partition keys, in one transaction.
   * Arrival times never decrease within a stream. Also trims records past retention.
   */
  async append(name: string, records: readonly AppendRecord[]): Promise<AppendResult[]> {
    this.assertOpen();
    const encoded = records.map((r, i) => encodeRecord(r, i));
    return this.db
      .transaction((): AppendResult[] => {
        const stream = this.stream(name);
        const now = Math.max(this.clock(), stream.last_arrival);
        this.trimStream(stream, now);
        const route = router(this.openShards(name));
        let last = stream.last_arrival;
        const results: AppendResult[] = [];
        for (const r of encoded) {
          const shardId = route(r.partitionKey);
          const arrival = Math.max(r.arrivalTime ?? now, last);
          last = arrival;
          const info = this.sql.insertRecord.run(name, shardId, r.partitionKey, r.data, arrival);
          results.push({ shardId, sequenceNumber: formatSequenceNumber(info.lastInsertRowid) });
        }
        if (last !== stream.last_arrival) this.sql.setLastArrival.run(last, name);
        return results;
      })
      .immediate();
  }

  /**
   * Splits an open shard (Kinesis SplitShard): the parent closes, and two children open with
   * the ranges [start, newStartingHashKey − 1] and [newStartingHashKey, end] (by default the
   * middle: [start, mid] and [mid + 1, end]). Returns the children's ids, lower range first.
   */
  async splitShard(name: string, shardId: string, newStartingHashKey?: string): Promise<[string, string]> {
    this.assertOpen();
    return this.db
      .transaction((): [string, string] => {
        const stream = this.stream(name);
        const parent = this.openShard(name, shardId);
        const start = BigInt(parent.hash_start);
        const end = BigInt(parent.hash_end);
        if (end === start) {
          throw new ConfigurationError(`shard ${shardId} owns a single hash key and cannot be split`);
        }
        let upperStart = (start + end) / 2n + 1n;
        if (newStartingHashKey !== undefined) {
          if (
            !/^\d{1,39}$/.test(newStartingHashKey) ||
            BigInt(newStartingHashKey) <= start ||
            BigInt(newStartingHashKey) > end
          ) {
            throw new ConfigurationError(
              `newStartingHashKey must be a decimal hash key in (${start}, ${end}] for shard ${shardId}; received ${describeValue(newStartingHashKey)}`,
            );
          }
          upperStart = BigInt(newStartingHashKey);
        }
        this.sql.closeShard.run(this.clock(), name, shardId);
        const lower = this.addShard(stream, start, upperStart - 1n, [shardId]);
        const upper = this.addShard(this.stream(name), upperStart, end, [shardId]);
        return [lower, upper];
      })
      .immediate();
  }

  /**
   * Merges two open shards with adjacent hash ranges (Kinesis MergeShards): both close and one
   * child opens over their union, with both as parents. Returns the child's id.
   */
  async mergeShards(name: string, shardId: string, adjacentShardId: string): Promise<string> {
    this.assertOpen();
    return this.db
      .transaction((): string => {
        const stream = this.stream(name);
        const a = this.openShard(name, shardId);
        const b = this.openShard(name, adjacentShardId);
        const [lo, hi] = BigInt(a.hash_start) < BigInt(b.hash_start) ? [a, b] : [b, a];
        if (BigInt(lo.hash_end) + 1n !== BigInt(hi.hash_start)) {
          throw new ConfigurationError(
            `shards ${shardId} and ${adjacentShardId} of stream "${name}" are not adjacent (${lo.shard_id} ends at ${lo.hash_end}, ${hi.shard_id} starts at ${hi.hash_start}); only adjacent shards merge`,
          );
        }
        const now = this.clock();
        this.sql.closeShard.run(now, name, shardId);
        this.sql.closeShard.run(now, name, adjacentShardId);
        return this.addShard(stream, BigInt(lo.hash_start), BigInt(hi.hash_end), [shardId, adjacentShardId]);
      })
      .immediate();
  }

  /**
   * Removes records older than the retention (by arrival time) from one stream or all, and
   * unlists closed shards that are empty and were closed longer than the retention ago.
   * Returns the number of records removed.
   */
  async trim(name?: string): Promise<number> {
    this.assertOpen();
    return this.db
      .transaction((): number => {
        const streams = name === undefined ? this.sql.listStreams.all() : [this.stream(name)];
        let removed = 0;
        for (const s of streams) removed += this.trimStream(s, Math.max(this.clock(), s.last_arrival));
        return removed;
      })
      .immediate();
  }

  /** The ShardSource over one stream, for workers and the local runner. */
  source(name: string, options: LocalLogSourceOptions = {}): LocalLogSource {
    this.assertOpen();
    return new LocalLogSource(this, name, options);
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.ownsDatabase) this.db.close();
  }

  // --- used by LocalLogSource and its readers ------------------------------------------------

  /** @internal */
  listShardInfos(name: string): ShardInfo[] {
    this.assertOpen();
    this.trimIfDue(name);
    return this.sql.listShards.all(name).map((row) => shardInfo(row));
  }

  /** @internal Where a new reader starts: the sequence number before its first record. */
  startPosition(name: string, shardId: string, position: StartPosition): number {
    this.assertOpen();
    const shard = this.shard(name, shardId);
    switch (position.type) {
      case 'TRIM_HORIZON':
        return shard.trimmed_through;
      case 'LATEST':
        return Math.max(shard.trimmed_through, this.sql.newest.get(name, shardId)?.seq ?? 0);
      case 'AT_TIMESTAMP': {
        if (typeof position.timestamp !== 'number' || Number.isNaN(position.timestamp)) {
          throw new ConfigurationError(
            `AT_TIMESTAMP needs a timestamp in epoch milliseconds; received ${describeValue(position.timestamp)}`,
          );
        }
        const before = this.sql.lastBefore.get(name, shardId, position.timestamp)?.seq;
        return Math.max(shard.trimmed_through, before ?? 0);
      }
      case 'AFTER_SEQUENCE_NUMBER': {
        const seq = parseSequenceNumber(position.sequenceNumber);
        const allocated = this.sql.allocated.get()?.seq ?? 0;
        if (seq > allocated) {
          throw new ConfigurationError(
            `sequence number ${position.sequenceNumber} is beyond every record of this log (newest ${formatSequenceNumber(allocated)}); the checkpoint belongs to another log file, or the log was recreated`,
          );
        }
        return seq;
      }
      default:
        throw new ConfigurationError(
          `unknown start position ${describeValue(position)}; use TRIM_HORIZON, LATEST, AT_TIMESTAMP or AFTER_SEQUENCE_NUMBER`,
        );
    }
  }

  /** @internal */
  readAfter(
    name: string,
    shardId: string,
    after: number,
    limit: number,
    onTrimmed: 'throw' | 'skip',
  ): { position: number; result: ReadResult } {
    this.assertOpen();
    this.shard(name, shardId);
    this.trimIfDue(name, shardId);
    const shard = this.shard(name, shardId);
    let position = after;
    if (position < shard.trimmed_through) {
      if (onTrimmed === 'throw') {
        throw new TrimmedPositionError(
          name,
          shardId,
          formatSequenceNumber(position),
          formatSequenceNumber(shard.trimmed_through),
        );
      }
      position = shard.trimmed_through;
    }
    const rows = this.sql.readAfter.all(name, shardId, position, limit);
    const records: SourceRecord[] = rows.map((row) => ({
      data: new Uint8Array(row.data.buffer, row.data.byteOffset, row.data.byteLength),
      partitionKey: row.partition_key,
      sequenceNumber: formatSequenceNumber(row.seq),
      arrivalTime: row.arrival,
    }));
    const last = rows[rows.length - 1];
    if (last !== undefined) position = last.seq;
    const newest = this.sql.newest.get(name, shardId);
    let millisBehindLatest = 0;
    if (newest !== undefined && newest.seq > position) {
      const from =
        last?.arrival ?? this.sql.readAfter.get(name, shardId, position, 1)?.arrival ?? newest.arrival;
      millisBehindLatest = Math.max(1, newest.arrival - from);
    }
    const shardEnded = shard.closed_at !== null && millisBehindLatest === 0;
    const result: ReadResult = shardEnded
      ? {
          records,
          millisBehindLatest,
          shardEnded,
          childShardIds: this.sql.children
            .all(name, `%${JSON.stringify(shardId)}%`)
            .filter((c) => (JSON.parse(c.parents) as string[]).includes(shardId))
            .map((c) => c.shard_id),
        }
      : { records, millisBehindLatest, shardEnded };
    return { position, result };
  }

  private describe(name: string): StreamDescription {
    const stream = this.stream(name);
    const shards = this.sql.listShards.all(name).map((row) => shardInfo(row));
    return {
      name,
      retentionMs: stream.retention_ms ?? undefined,
      createdAt: stream.created_at,
      shards,
      openShardCount: shards.filter((s) => !s.closed).length,
      records: this.sql.countRecords.get(name)?.n ?? 0,
    };
  }

  private stream(name: string): StreamRow {
    const row = this.sql.getStream.get(name);
    if (row === undefined) {
      const known = this.sql.listStreams.all().map((r) => r.name);
      throw new ConfigurationError(
        `stream "${name}" does not exist in the local log (streams: ${known.length > 0 ? known.map((k) => `"${k}"`).join(', ') : 'none'}); create it first, e.g. createStream("${name}", { shards: 2 })`,
      );
    }
    return row;
  }

  private shard(name: string, shardId: string): ShardRow {
    const row = this.sql.getShard.get(name, shardId);
    if (row === undefined) {
      this.stream(name);
      const known = this.sql.listShards.all(name).map((r) => r.shard_id);
      throw new ConfigurationError(
        `stream "${name}" has no shard ${JSON.stringify(shardId)} (shards: ${known.join(', ')})`,
      );
    }
    return row;
  }

  private openShards(name: string): ShardRow[] {
    return this.sql.listShards.all(name).filter((s) => s.closed_at === null);
  }

  private insertShard(name: string, idx: number, rangeIndex: number, count: number, parents: string[]): void {
    const range = hashRange(rangeIndex, count);
    this.sql.insertShard.run(
      name,
      shardName(idx),
      idx,
      range.start.toString(),
      range.end.toString(),
      JSON.stringify(parents),
    );
  }

  /** Adds a shard with the next index of the stream; returns its id. */
  private addShard(stream: StreamRow, start: bigint, end: bigint, parents: string[]): string {
    const id = shardName(stream.next_shard);
    this.sql.insertShard.run(
      stream.name,
      id,
      stream.next_shard,
      start.toString(),
      end.toString(),
      JSON.stringify(parents),
    );
    this.sql.setNextShard.run(stream.next_shard + 1, stream.name);
    return id;
  }

  private openShard(name: string, shardId: string): ShardRow {
    const shard = this.shard(name, shardId);
    if (shard.closed_at !== null) {
      throw new ConfigurationError(
        `shard ${shardId} of stream "${name}" is closed; only open shards can be resharded`,
      );
    }
    return shard;
  }

  /**
   * Trims the stream if a shard (or `shardId` only) holds records past retention, or a closed
   * empty shard is due to be unlisted. Readers call it, so expired records are never returned
   * even if nobody appends.
   */
  private trimIfDue(name: string, shardId?: string): void {
    const stream = this.stream(name);
    if (stream.retention_ms === null) return;
    const cutoff = cutoffOf(stream, Math.max(this.clock(), stream.last_arrival));
    const shards = this.sql.listShards
      .all(name)
      .filter((s) => shardId === undefined || s.shard_id === shardId);
    const due = shards.some((s) => {
      const oldest = this.sql.oldest.get(name, s.shard_id);
      return oldest === undefined ? s.closed_at !== null && s.closed_at < cutoff : oldest.arrival < cutoff;
    });
    if (due) {
      const trim = this.db.transaction(() => {
        const current = this.stream(name);
        this.trimStream(current, Math.max(this.clock(), current.last_arrival));
      });
      retryIfBusy(`trimming stream "${name}"`, () => trim.immediate());
    }
  }

  /** Trims one stream at `now` (inside a write transaction). */
  private trimStream(stream: StreamRow, now: number): number {
    if (stream.retention_ms === null) return 0;
    const cutoff = cutoffOf(stream, now);
    let removed = 0;
    for (const shard of this.sql.listShards.all(stream.name)) {
      const through = this.sql.lastBefore.get(stream.name, shard.shard_id, cutoff)?.seq;
      if (through !== undefined) {
        removed += this.sql.trimShard.run(stream.name, shard.shard_id, through).changes;
        this.sql.setTrimmedThrough.run(through, stream.name, shard.shard_id);
      }
      if (shard.closed_at !== null && shard.closed_at < cutoff) {
        if (this.sql.oldest.get(stream.name, shard.shard_id) === undefined) {
          this.sql.unlistShard.run(stream.name, shard.shard_id);
        }
      }
    }
    return removed;
  }

  private assertOpen(): void {
    if (this.closed) throw new ConfigurationError('the local log is closed; open it again');
  }
}

/** The ShardSource of one stream of a LocalLog. */
export class LocalLogSource implements ShardSource {
  constructor(
    private readonly log: LocalLog,
    readonly stream: string,
    private readonly options: LocalLogSourceOptions = {},
  ) {}

  async listShards(): Promise<ShardInfo[]> {
    return this.log.listShardInfos(this.stream);
  }

  async openReader(shardId: string, position: StartPosition): Promise<LocalLogReader> {
    const after = this.log.startPosition(this.stream, shardId, position);
    return new LocalLogReader(this.log, this.stream, shardId, after, this.options.onTrimmed ?? 'throw');
  }
}

/** How long readers may keep the event loop busy before a read yields to it (wall ms). */
const YIELD_INTERVAL_MS = 10;
/** When a read last yielded to the event loop; shared by the readers of the process. */
let lastYield = 0;

export class LocalLogReader implements ShardReader {
  private closed = false;

  constructor(
    private readonly log: LocalLog,
    readonly stream: string,
    readonly shardId: string,
    private after: number,
    private readonly onTrimmed: 'throw' | 'skip',
  ) {}

  /** The sequence number of the last record read (or the start position). */
  get position(): string {
    return formatSequenceNumber(this.after);
  }

  async read(limit: number): Promise<ReadResult> {
    if (this.closed) throw new ConfigurationError(`the reader of shard ${this.shardId} is closed`);
    if (!Number.isInteger(limit) || limit < 1 || limit > MAX_READ_LIMIT) {
      throw new ConfigurationError(
        `read limit must be a whole number from 1 to ${MAX_READ_LIMIT}; received ${describeValue(limit)}`,
      );
    }
    // SQLite answers synchronously, so a worker catching up would otherwise run read after read
    // on microtasks alone and starve the event loop: no signal handler (Ctrl-C), timer (progress
    // view) or other I/O would run until the shard is caught up. Yield as a network read does,
    // though at most every few milliseconds, so small batches do not each pay a turn of the loop.
    if (Date.now() - lastYield >= YIELD_INTERVAL_MS) {
      await new Promise<void>((resolve) => setImmediate(resolve));
      lastYield = Date.now();
      if (this.closed) throw new ConfigurationError(`the reader of shard ${this.shardId} is closed`);
    }
    const { position, result } = this.log.readAfter(
      this.stream,
      this.shardId,
      this.after,
      limit,
      this.onTrimmed,
    );
    this.after = position;
    return result;
  }

  async close(): Promise<void> {
    this.closed = true;
  }
}

function prepareStatements(db: SqliteDatabase) {
  return {
    getStream: db.prepare<[string], StreamRow>('SELECT * FROM floe_log_stream WHERE name = ?'),
    listStreams: db.prepare<[], StreamRow>('SELECT * FROM floe_log_stream ORDER BY name'),
    insertStream: db.prepare(
      'INSERT INTO floe_log_stream (name, retention_ms, created_at, last_arrival, next_shard) VALUES (?, ?, ?, ?, ?)',
    ),
    deleteStream: db.prepare('DELETE FROM floe_log_stream WHERE name = ?'),
    setLastArrival: db.prepare('UPDATE floe_log_stream SET last_arrival = ? WHERE name = ?'),
    setNextShard: db.prepare('UPDATE floe_log_stream SET next_shard = ? WHERE name = ?'),
    insertShard: db.prepare(
      'INSERT INTO floe_log_shard (stream, shard_id, idx, hash_start, hash_end, parents) VALUES (?, ?, ?, ?, ?, ?)',
    ),
    getShard: db.prepare<[string, string], ShardRow>(
      'SELECT * FROM floe_log_shard WHERE stream = ? AND shard_id = ?',
    ),
    listShards: db.prepare<[string], ShardRow>(
      'SELECT * FROM floe_log_shard WHERE stream = ? AND deleted = 0 ORDER BY idx',
    ),
    children: db.prepare<[string, string], ShardRow>(
      'SELECT * FROM floe_log_shard WHERE stream = ? AND parents LIKE ? ORDER BY idx',
    ),
    closeShard: db.prepare('UPDATE floe_log_shard SET closed_at = ? WHERE stream = ? AND shard_id = ?'),
    unlistShard: db.prepare('UPDATE floe_log_shard SET deleted = 1 WHERE stream = ? AND shard_id = ?'),
    setTrimmedThrough: db.prepare(
      'UPDATE floe_log_shard SET trimmed_through = max(trimmed_through, ?) WHERE stream = ? AND shard_id = ?',
    ),
    deleteShards: db.prepare('DELETE FROM floe_log_shard WHERE stream = ?'),
    insertRecord: db.prepare(
      'INSERT INTO floe_log_record (stream, shard_id, partition_key, data, arrival) VALUES (?, ?, ?, ?, ?)',
    ),
    readAfter: db.prepare<[string, string, number, number], RecordRow>(
      'SELECT seq, partition_key, data, arrival FROM floe_log_record WHERE stream = ? AND shard_id = ? AND seq > ? ORDER BY seq LIMIT ?',
    ),
    newest: db.prepare<[string, string], { seq: number; arrival: number }>(
      'SELECT seq, arrival FROM floe_log_record WHERE stream = ? AND shard_id = ? ORDER BY seq DESC LIMIT 1',
    ),
    oldest: db.prepare<[string, string], { seq: number; arrival: number }>(
      'SELECT seq, arrival FROM floe_log_record WHERE stream = ? AND shard_id = ? ORDER BY seq LIMIT 1',
    ),
    lastBefore: db.prepare<[string, string, number], { seq: number }>(
      'SELECT seq FROM floe_log_record WHERE stream = ? AND shard_id = ? AND arrival < ? ORDER BY arrival DESC, seq DESC LIMIT 1',
    ),
    trimShard: db.prepare('DELETE FROM floe_log_record WHERE stream = ? AND shard_id = ? AND seq <= ?'),
    deleteRecords: db.prepare('DELETE FROM floe_log_record WHERE stream = ?'),
    countRecords: db.prepare<[string], { n: number }>(
      'SELECT count(*) AS n FROM floe_log_record WHERE stream = ?',
    ),
    allocated: db.prepare<[], { seq: number }>(
      "SELECT seq FROM sqlite_sequence WHERE name = 'floe_log_record'",
    ),
  };
}

/**
 * Maps a partition key to the open shard owning its MD5 hash key. Open shards tile the hash
 * space; when they are N equal ranges (no split or merge) this is shardIndexFor.
 */
function router(open: readonly ShardRow[]): (partitionKey: string) => string {
  const shards = open
    .map((s) => ({ id: s.shard_id, start: BigInt(s.hash_start), end: BigInt(s.hash_end) }))
    .sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const uniform = shards.every((s, i) => {
    const r = hashRange(i, shards.length);
    return s.start === r.start && s.end === r.end;
  });
  if (uniform) return (partitionKey) => shards[shardIndexFor(partitionKey, shards.length)]!.id;
  return (partitionKey) => {
    const h = hashKey(partitionKey);
    let lo = 0;
    let hi = shards.length - 1;
    while (lo <= hi) {
      const mid = (lo + hi) >> 1;
      const s = shards[mid]!;
      if (h < s.start) hi = mid - 1;
      else if (h > s.end) lo = mid + 1;
      else return s.id;
    }
    throw new Error(
      `internal: no open shard owns the hash key of partition key ${JSON.stringify(partitionKey)}`,
    );
  };
}

function shardInfo(row: ShardRow): ShardInfo {
  return {
    shardId: row.shard_id,
    parentShardIds: JSON.parse(row.parents) as string[],
    hashKeyRange: { start: row.hash_start, end: row.hash_end },
    closed: row.closed_at !== null,
  };
}

function cutoffOf(stream: StreamRow, now: number): number {
  return stream.retention_ms === null ? Number.NEGATIVE_INFINITY : now - stream.retention_ms;
}

function encodeRecord(
  record: AppendRecord,
  index: number,
): { partitionKey: string; data: Uint8Array; arrivalTime: number | undefined } {
  const where = `record ${index}`;
  if (record === null || typeof record !== 'object') {
    throw new TypeError(
      `${where} must be an object { partitionKey, data }; received ${describeValue(record)}`,
    );
  }
  const { partitionKey, data } = record;
  if (
    typeof partitionKey !== 'string' ||
    partitionKey.length === 0 ||
    partitionKey.length > MAX_PARTITION_KEY_LENGTH
  ) {
    throw new TypeError(
      `${where}: partitionKey must be a string of 1 to ${MAX_PARTITION_KEY_LENGTH} characters; received ${describeValue(partitionKey)}`,
    );
  }
  let bytes: Uint8Array;
  if (data instanceof Uint8Array) bytes = data;
  else if (typeof data === 'string') bytes = encoder.encode(data);
  else {
    throw new TypeError(
      `${where}: data must be a Uint8Array or a string; received ${describeValue(data)} (JSON.stringify values first)`,
    );
  }
  if (bytes.byteLength > MAX_RECORD_BYTES) {
    throw new TypeError(
      `${where}: data is ${bytes.byteLength} bytes; a record holds at most ${MAX_RECORD_BYTES}`,
    );
  }
  const { arrivalTime } = record;
  if (arrivalTime !== undefined && (typeof arrivalTime !== 'number' || !Number.isFinite(arrivalTime))) {
    throw new TypeError(
      `${where}: arrivalTime must be epoch milliseconds; received ${describeValue(arrivalTime)}`,
    );
  }
  return {
    partitionKey,
    data: bytes,
    arrivalTime: arrivalTime === undefined ? undefined : Math.floor(arrivalTime),
  };
}

function parseSequenceNumber(text: string): number {
  if (typeof text !== 'string' || !/^\d{1,40}$/.test(text)) {
    throw new ConfigurationError(
      `a sequence number is a string of decimal digits; received ${describeValue(text)}`,
    );
  }
  const value = BigInt(text);
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? Number.MAX_SAFE_INTEGER : Number(value);
}

function checkShardCount(shards: number): number {
  if (!Number.isInteger(shards) || shards < 1 || shards > MAX_SHARDS) {
    throw new ConfigurationError(
      `shards must be a whole number from 1 to ${MAX_SHARDS}; received ${describeValue(shards)}`,
    );
  }
  return shards;
}

function checkRetention(retentionMs: number | undefined): number | null {
  if (retentionMs === undefined) return DEFAULT_RETENTION_MS;
  if (retentionMs === Number.POSITIVE_INFINITY) return null;
  if (typeof retentionMs !== 'number' || !Number.isFinite(retentionMs) || retentionMs <= 0) {
    throw new ConfigurationError(
      `retentionMs must be a positive number of milliseconds or Infinity; received ${describeValue(retentionMs)}`,
    );
  }
  return Math.ceil(retentionMs);
}
