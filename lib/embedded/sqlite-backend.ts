/**
 * SQLite StateStore + CheckpointStore: the embedded backend. One SQLite file (WAL mode) holds
 * the keyed state, leases, checkpoints and outboxes of any number of (job, generation) scopes;
 * each SqliteBackend works on one scope. Semantics are those of MemoryBackend (the reference
 * adapter): a commit is ONE SQLite transaction applying the state mutations, appending the
 * outputs to the outbox and writing the checkpoint, conditional on the lease's fence and on
 * the commit number following the stored one. Write transactions take the write lock first
 * (BEGIN IMMEDIATE), so several processes can share the file safely.
 */
import {
  compareSequenceNumbers,
  deserializeCheckpoint,
  type ShardCheckpoint,
  serializeCheckpoint,
} from '../core/checkpoint.ts';
import {
  ConfigurationError,
  describeValue,
  FencedError,
  LeaseUnavailableError,
  StateFormatError,
  StateSerializationError,
} from '../core/errors.ts';
import type { CheckpointStore, Commit, Lease, Output, StateAddress, StateStore } from '../core/ports.ts';
import { ensureSchema } from './schema.ts';
import { openSqlite, retryIfBusy, type SqliteDatabase, type SqliteOpenOptions } from './sqlite.ts';

export const SQLITE_BACKEND_SCHEMA_VERSION = 1;

const DDL = `
CREATE TABLE IF NOT EXISTS floe_state (
  job TEXT NOT NULL, generation INTEGER NOT NULL, address TEXT NOT NULL, value TEXT NOT NULL,
  PRIMARY KEY (job, generation, address)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS floe_lease (
  job TEXT NOT NULL, generation INTEGER NOT NULL, shard_id TEXT NOT NULL,
  owner TEXT NOT NULL, fence INTEGER NOT NULL, expires_at INTEGER NOT NULL,
  PRIMARY KEY (job, generation, shard_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS floe_checkpoint (
  job TEXT NOT NULL, generation INTEGER NOT NULL, shard_id TEXT NOT NULL,
  commit_number INTEGER NOT NULL, position TEXT, body TEXT NOT NULL,
  PRIMARY KEY (job, generation, shard_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS floe_outbox (
  id INTEGER PRIMARY KEY,
  job TEXT NOT NULL, generation INTEGER NOT NULL, shard_id TEXT NOT NULL,
  output_id TEXT NOT NULL, sink TEXT NOT NULL, value TEXT
);
CREATE INDEX IF NOT EXISTS floe_outbox_order ON floe_outbox (job, generation, shard_id, id);
CREATE INDEX IF NOT EXISTS floe_outbox_output ON floe_outbox (job, generation, shard_id, output_id);
`;

/** The (job, generation) a backend works on. */
export interface SqliteScope {
  /** Job id. */
  readonly job: string;
  /** State generation: a restore or replay writes a new one. @default 0 */
  readonly generation?: number;
}

export interface SqliteBackendOptions extends SqliteScope, SqliteOpenOptions {}

/** A (job, generation) present in a file, with its size. */
export interface SqliteScopeInfo {
  readonly job: string;
  readonly generation: number;
  readonly stateEntries: number;
  readonly checkpoints: number;
}

interface LeaseRow {
  owner: string;
  fence: number;
  expires_at: number;
}

interface CheckpointRow {
  commit_number: number;
  position: string | null;
  body: string;
}

interface OutboxRow {
  output_id: string;
  sink: string;
  value: string | null;
}

/** Addresses per getMany query (one JSON parameter each); a batch rarely needs more than one. */
const GET_MANY_CHUNK = 20_000;
/** Ids per markPublished statement. */
const MARK_CHUNK = 5_000;

export class SqliteBackend implements StateStore, CheckpointStore {
  readonly job: string;
  readonly generation: number;
  /** Number of getMany calls, SQL queries and entries read, for tests of the bulk-load behaviour. */
  readonly reads = { calls: 0, queries: 0, entries: 0 };
  private closed = false;
  private readonly sql: ReturnType<typeof prepareStatements>;

  /**
   * Works on `scope` of an open database. The caller owns `db` (close() leaves it open), so
   * several backends (jobs, generations) can share one connection.
   */
  constructor(
    readonly db: SqliteDatabase,
    scope: SqliteScope,
    private readonly ownsDatabase = false,
  ) {
    if (typeof scope.job !== 'string' || scope.job.length === 0) {
      throw new ConfigurationError(`job must be a non-empty string; received ${describeValue(scope.job)}`);
    }
    const generation = scope.generation ?? 0;
    if (!Number.isSafeInteger(generation) || generation < 0) {
      throw new ConfigurationError(
        `generation must be a whole number ≥ 0; received ${describeValue(scope.generation)}`,
      );
    }
    this.job = scope.job;
    this.generation = generation;
    ensureSchema(db, 'backend', SQLITE_BACKEND_SCHEMA_VERSION, DDL);
    this.sql = prepareStatements(db);
  }

  /** Opens (or creates) the SQLite file at `path` and works on the given scope. */
  static open(path: string, options: SqliteBackendOptions): SqliteBackend {
    const db = openSqlite(path, options);
    try {
      return new SqliteBackend(db, options, true);
    } catch (error) {
      db.close();
      throw error;
    }
  }

  /** Every (job, generation) with state or checkpoints in the database. */
  static listScopes(db: SqliteDatabase): SqliteScopeInfo[] {
    ensureSchema(db, 'backend', SQLITE_BACKEND_SCHEMA_VERSION, DDL);
    return db
      .prepare<[], SqliteScopeInfo>(
        `SELECT job, generation, sum(s) AS stateEntries, sum(c) AS checkpoints FROM (
           SELECT job, generation, count(*) AS s, 0 AS c FROM floe_state GROUP BY job, generation
           UNION ALL
           SELECT job, generation, 0, count(*) FROM floe_checkpoint GROUP BY job, generation
         ) GROUP BY job, generation ORDER BY job, generation`,
      )
      .all();
  }

  async getMany(addresses: readonly StateAddress[]): Promise<Map<StateAddress, string>> {
    this.assertOpen();
    this.reads.calls++;
    const out = new Map<StateAddress, string>();
    if (addresses.length === 0) return out;
    const unique = [...new Set(addresses)];
    for (let i = 0; i < unique.length; i += GET_MANY_CHUNK) {
      const chunk = i === 0 && unique.length <= GET_MANY_CHUNK ? unique : unique.slice(i, i + GET_MANY_CHUNK);
      this.reads.queries++;
      const rows = this.sql.getMany.all({
        job: this.job,
        generation: this.generation,
        addresses: JSON.stringify(chunk),
      });
      for (const row of rows) out.set(row.address, row.value);
    }
    this.reads.entries += out.size;
    return out;
  }

  async acquireLease(shardId: string, owner: string, now: number, ttlMs: number): Promise<Lease> {
    this.assertOpen();
    const acquire = this.db.transaction((): Lease => {
      const current = this.sql.readLease.get(this.job, this.generation, shardId);
      if (current !== undefined && current.expires_at > now && current.owner !== owner) {
        throw new LeaseUnavailableError(
          `shard ${shardId} of job ${this.job} (generation ${this.generation}) is leased by ${current.owner} until ${isoTime(current.expires_at)}; retry after it expires`,
        );
      }
      const lease: Lease = { shardId, owner, fence: (current?.fence ?? 0) + 1, expiresAt: now + ttlMs };
      this.sql.writeLease.run(this.job, this.generation, shardId, owner, lease.fence, lease.expiresAt);
      return lease;
    });
    return retryIfBusy(`taking the lease of shard ${shardId}`, () => acquire.immediate());
  }

  async renewLease(lease: Lease, now: number, ttlMs: number): Promise<Lease> {
    this.assertOpen();
    const expiresAt = now + ttlMs;
    const result = retryIfBusy(`renewing the lease of shard ${lease.shardId}`, () =>
      this.sql.renewLease.run(expiresAt, this.job, this.generation, lease.shardId, lease.fence),
    );
    if (result.changes === 0) throw this.fenced(lease);
    return { shardId: lease.shardId, owner: lease.owner, fence: lease.fence, expiresAt };
  }

  async releaseLease(lease: Lease): Promise<void> {
    this.assertOpen();
    this.sql.releaseLease.run(this.job, this.generation, lease.shardId, lease.fence);
  }

  async readCheckpoint(shardId: string): Promise<ShardCheckpoint | undefined> {
    this.assertOpen();
    const row = this.sql.readCheckpoint.get(this.job, this.generation, shardId);
    return row === undefined ? undefined : deserializeCheckpoint(row.body);
  }

  async listCheckpoints(): Promise<ShardCheckpoint[]> {
    this.assertOpen();
    return this.sql.listCheckpoints
      .all(this.job, this.generation)
      .map((row) => deserializeCheckpoint(row.body));
  }

  async commit(lease: Lease, commit: Commit): Promise<void> {
    this.assertOpen();
    const { checkpoint } = commit;
    if (checkpoint.shardId !== lease.shardId) {
      throw new StateFormatError(
        `commit for shard ${checkpoint.shardId} under the lease of shard ${lease.shardId}`,
      );
    }
    // Serialize everything before the transaction: a bad value fails the commit up front.
    const checkpointText = serializeCheckpoint(checkpoint);
    const outputValues = commit.outputs.map(encodeOutputValue);
    const write = this.db.transaction(() => {
      const current = this.sql.readLease.get(this.job, this.generation, lease.shardId);
      if (current === undefined || current.fence !== lease.fence) throw this.fenced(lease, current);
      const previous = this.sql.readCheckpoint.get(this.job, this.generation, lease.shardId);
      if (previous !== undefined) {
        if (checkpoint.commitNumber !== previous.commit_number + 1) {
          throw new FencedError(
            `commit ${checkpoint.commitNumber} of shard ${lease.shardId} does not follow the stored commit ${previous.commit_number}; another invocation committed in between`,
          );
        }
        if (
          previous.position !== null &&
          checkpoint.position !== undefined &&
          compareSequenceNumbers(checkpoint.position, previous.position) < 0
        ) {
          throw new StateFormatError(
            `checkpoint position of shard ${lease.shardId} would move backwards (from ${previous.position} to ${checkpoint.position})`,
          );
        }
      }
      const { job, generation } = this;
      for (const m of commit.mutations) {
        if (m.value === null) this.sql.deleteState.run(job, generation, m.address);
        else this.sql.putState.run(job, generation, m.address, m.value);
      }
      commit.outputs.forEach((o, i) => {
        this.sql.appendOutbox.run(job, generation, lease.shardId, o.id, o.sink, outputValues[i]);
      });
      this.sql.writeCheckpoint.run(
        job,
        generation,
        lease.shardId,
        checkpoint.commitNumber,
        checkpoint.position ?? null,
        checkpointText,
      );
    });
    retryIfBusy(`committing shard ${lease.shardId}`, () => write.immediate());
  }

  async unpublishedOutputs(shardId: string): Promise<Output[]> {
    this.assertOpen();
    return this.sql.unpublished.all(this.job, this.generation, shardId).map((row) => ({
      id: row.output_id,
      sink: row.sink,
      value: row.value === null ? undefined : (JSON.parse(row.value) as unknown),
    }));
  }

  async markPublished(shardId: string, ids: readonly string[]): Promise<void> {
    this.assertOpen();
    if (ids.length === 0) return;
    const mark = this.db.transaction(() => {
      for (let i = 0; i < ids.length; i += MARK_CHUNK) {
        this.sql.markPublished.run({
          job: this.job,
          generation: this.generation,
          shard: shardId,
          ids: JSON.stringify(ids.slice(i, i + MARK_CHUNK)),
        });
      }
    });
    retryIfBusy(`marking outputs of shard ${shardId} published`, () => mark.immediate());
  }

  /**
   * Every live state entry of this job generation, in address order (for savepoints and
   * inspection). Reads page by page, so other calls may run between pages; entries written
   * meanwhile may or may not be seen.
   */
  *entries(options: { prefix?: string; pageSize?: number } = {}): Generator<[StateAddress, string]> {
    const pageSize = Math.max(1, Math.floor(options.pageSize ?? 1000));
    // Text compares as UTF-8 bytes (code point order): the entries with a prefix are one range.
    const prefix = options.prefix ?? '';
    let after = '';
    for (;;) {
      this.assertOpen();
      const page = this.sql.entriesPage.all(this.job, this.generation, prefix, after, pageSize);
      for (const row of page) {
        if (!row[0].startsWith(prefix)) return;
        yield row;
      }
      if (page.length < pageSize) return;
      after = page[page.length - 1]![0];
    }
  }

  /** Number of live state entries of this job generation. */
  countEntries(): number {
    this.assertOpen();
    return this.sql.countState.get(this.job, this.generation)?.n ?? 0;
  }

  /**
   * Writes state entries directly (restoring a savepoint into this generation), in
   * transactions of `batchSize` entries. `guard` runs first in each transaction (holding the
   * write lock) and throws to write nothing: a restore checks there that the job record still
   * names it, so a restore that stalled cannot write over a generation that went live.
   */
  importEntries(
    entries: Iterable<readonly [StateAddress, string]>,
    batchSize = 5_000,
    guard?: () => void,
  ): number {
    this.assertOpen();
    let count = 0;
    let batch: Array<readonly [StateAddress, string]> = [];
    const flush = this.db.transaction((rows: Array<readonly [StateAddress, string]>) => {
      guard?.();
      for (const [address, value] of rows) this.sql.putState.run(this.job, this.generation, address, value);
    });
    for (const entry of entries) {
      batch.push(entry);
      if (batch.length >= batchSize) {
        flush.immediate(batch);
        count += batch.length;
        batch = [];
      }
    }
    if (batch.length > 0) flush.immediate(batch);
    return count + batch.length;
  }

  /**
   * Sets the checkpoint of a shard that has none yet (restoring a savepoint). Throws
   * ConfigurationError if the shard already has a checkpoint in this generation. `guard` runs
   * first in the transaction, as in importEntries.
   */
  importCheckpoint(checkpoint: ShardCheckpoint, guard?: () => void): void {
    this.assertOpen();
    const text = serializeCheckpoint(checkpoint);
    this.db
      .transaction(() => {
        guard?.();
        if (this.sql.readCheckpoint.get(this.job, this.generation, checkpoint.shardId) !== undefined) {
          throw new ConfigurationError(
            `shard ${checkpoint.shardId} of job ${this.job} already has a checkpoint in generation ${this.generation}; restore into a new generation or job`,
          );
        }
        this.sql.writeCheckpoint.run(
          this.job,
          this.generation,
          checkpoint.shardId,
          checkpoint.commitNumber,
          checkpoint.position ?? null,
          text,
        );
      })
      .immediate();
  }

  /**
   * Puts outputs into a shard's outbox (restoring a savepoint's undelivered outputs), after any
   * it already holds; one already there by id is left as it is. Not fenced: run it before any
   * worker starts.
   */
  importOutputs(shardId: string, outputs: readonly Output[], guard?: () => void): void {
    this.assertOpen();
    const values = outputs.map(encodeOutputValue);
    this.db
      .transaction(() => {
        guard?.();
        const present = new Set(
          this.sql.unpublished.all(this.job, this.generation, shardId).map((row) => row.output_id),
        );
        outputs.forEach((o, i) => {
          if (present.has(o.id)) return;
          this.sql.appendOutbox.run(this.job, this.generation, shardId, o.id, o.sink, values[i]);
        });
      })
      .immediate();
  }

  /**
   * Deletes this job generation's state, outbox, leases and checkpoints in one transaction (an
   * abandoned restore's generation, which no worker runs). Returns what it deleted.
   */
  dropScope(): { stateEntries: number; checkpoints: number } {
    this.assertOpen();
    const scope = { job: this.job, generation: this.generation };
    return this.db
      .transaction(() => {
        const stateEntries = this.sql.dropState.run(scope).changes;
        this.sql.dropOutbox.run(scope);
        this.sql.dropLeases.run(scope);
        return { stateEntries, checkpoints: this.sql.dropCheckpoints.run(scope).changes };
      })
      .immediate();
  }

  /** Closes the database if this backend opened it. Further calls throw. */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.ownsDatabase) this.db.close();
  }

  private assertOpen(): void {
    if (this.closed) {
      throw new ConfigurationError(
        `the SQLite backend of job ${this.job} (generation ${this.generation}) is closed; open a new one`,
      );
    }
  }

  private fenced(lease: Lease, current?: LeaseRow): FencedError {
    const now = current ?? this.sql.readLease.get(this.job, this.generation, lease.shardId);
    return new FencedError(
      `the lease of shard ${lease.shardId} with fence ${lease.fence} was taken over (current fence ${now?.fence ?? 'none'}); stop this invocation, the new owner resumes from the last commit`,
    );
  }
}

function prepareStatements(db: SqliteDatabase) {
  const scoped = 'job = @job AND generation = @generation';
  return {
    getMany: db.prepare<
      [{ job: string; generation: number; addresses: string }],
      { address: string; value: string }
    >(
      `SELECT address, value FROM floe_state WHERE ${scoped} AND address IN (SELECT value FROM json_each(@addresses))`,
    ),
    putState: db.prepare(
      'INSERT INTO floe_state (job, generation, address, value) VALUES (?, ?, ?, ?) ON CONFLICT (job, generation, address) DO UPDATE SET value = excluded.value',
    ),
    deleteState: db.prepare('DELETE FROM floe_state WHERE job = ? AND generation = ? AND address = ?'),
    entriesPage: db
      .prepare<[string, number, string, string, number], [string, string]>(
        'SELECT address, value FROM floe_state WHERE job = ? AND generation = ? AND address >= ? AND address > ? ORDER BY address LIMIT ?',
      )
      .raw(true),
    countState: db.prepare<[string, number], { n: number }>(
      'SELECT count(*) AS n FROM floe_state WHERE job = ? AND generation = ?',
    ),
    readLease: db.prepare<[string, number, string], LeaseRow>(
      'SELECT owner, fence, expires_at FROM floe_lease WHERE job = ? AND generation = ? AND shard_id = ?',
    ),
    writeLease: db.prepare(
      'INSERT INTO floe_lease (job, generation, shard_id, owner, fence, expires_at) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job, generation, shard_id) DO UPDATE SET owner = excluded.owner, fence = excluded.fence, expires_at = excluded.expires_at',
    ),
    renewLease: db.prepare(
      'UPDATE floe_lease SET expires_at = ? WHERE job = ? AND generation = ? AND shard_id = ? AND fence = ?',
    ),
    releaseLease: db.prepare(
      'UPDATE floe_lease SET expires_at = 0 WHERE job = ? AND generation = ? AND shard_id = ? AND fence = ?',
    ),
    readCheckpoint: db.prepare<[string, number, string], CheckpointRow>(
      'SELECT commit_number, position, body FROM floe_checkpoint WHERE job = ? AND generation = ? AND shard_id = ?',
    ),
    listCheckpoints: db.prepare<[string, number], { body: string }>(
      'SELECT body FROM floe_checkpoint WHERE job = ? AND generation = ? ORDER BY shard_id',
    ),
    writeCheckpoint: db.prepare(
      'INSERT INTO floe_checkpoint (job, generation, shard_id, commit_number, position, body) VALUES (?, ?, ?, ?, ?, ?) ON CONFLICT (job, generation, shard_id) DO UPDATE SET commit_number = excluded.commit_number, position = excluded.position, body = excluded.body',
    ),
    appendOutbox: db.prepare(
      'INSERT INTO floe_outbox (job, generation, shard_id, output_id, sink, value) VALUES (?, ?, ?, ?, ?, ?)',
    ),
    unpublished: db.prepare<[string, number, string], OutboxRow>(
      'SELECT output_id, sink, value FROM floe_outbox WHERE job = ? AND generation = ? AND shard_id = ? ORDER BY id',
    ),
    dropState: db.prepare<[{ job: string; generation: number }]>(`DELETE FROM floe_state WHERE ${scoped}`),
    dropOutbox: db.prepare<[{ job: string; generation: number }]>(`DELETE FROM floe_outbox WHERE ${scoped}`),
    dropLeases: db.prepare<[{ job: string; generation: number }]>(`DELETE FROM floe_lease WHERE ${scoped}`),
    dropCheckpoints: db.prepare<[{ job: string; generation: number }]>(
      `DELETE FROM floe_checkpoint WHERE ${scoped}`,
    ),
    markPublished: db.prepare<[{ job: string; generation: number; shard: string; ids: string }]>(
      `DELETE FROM floe_outbox WHERE ${scoped} AND shard_id = @shard AND output_id IN (SELECT value FROM json_each(@ids))`,
    ),
  };
}

function encodeOutputValue(output: Output): string | null {
  if (output.value === undefined) return null;
  let text: string | undefined;
  try {
    text = JSON.stringify(output.value);
  } catch (error) {
    throw new StateSerializationError(
      `output ${output.id} to sink "${output.sink}" is not JSON-serializable (${String(error)}); emit plain data (objects, arrays, strings, numbers, booleans, null)`,
      { cause: error },
    );
  }
  // JSON.stringify returns undefined for functions and symbols.
  if (text === undefined) {
    throw new StateSerializationError(
      `output ${output.id} to sink "${output.sink}" is not JSON-serializable (received ${describeValue(output.value)}); emit plain data`,
    );
  }
  return text;
}

function isoTime(ms: number): string {
  const d = new Date(ms);
  return Number.isNaN(d.getTime()) ? String(ms) : d.toISOString();
}
