/** SQLite-specific behaviour beyond the shared contract (sqlite-backend.test.ts runs that). */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, afterEach, beforeEach, describe, expect, it } from 'vitest';
import { initialCheckpoint, type ShardCheckpoint } from '../core/checkpoint.ts';
import {
  ConfigurationError,
  FencedError,
  LeaseUnavailableError,
  StateFormatError,
  StateSerializationError,
  TransientBackendError,
} from '../core/errors.ts';
import type { Lease, StateMutation } from '../core/ports.ts';
import { SqliteTableSink } from './sinks.ts';
import { openSqlite } from './sqlite.ts';
import { SqliteBackend } from './sqlite-backend.ts';

const dir = mkdtempSync(join(tmpdir(), 'floe-sqlite-backend-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;

const SHARD = 'shardId-000000000000';
const T0 = 1_700_000_000_000;
const TTL = 60_000;

function next(prev: ShardCheckpoint | undefined, changes: Partial<ShardCheckpoint> = {}): ShardCheckpoint {
  const base = prev ?? initialCheckpoint(SHARD);
  return { ...base, commitNumber: base.commitNumber + 1, ...changes };
}

async function commit(
  backend: SqliteBackend,
  lease: Lease,
  mutations: StateMutation[],
  values: unknown[] = [],
  changes: Partial<ShardCheckpoint> = {},
): Promise<void> {
  const checkpoint = next(await backend.readCheckpoint(lease.shardId), {
    shardId: lease.shardId,
    ...changes,
  });
  await backend.commit(lease, {
    checkpoint,
    mutations,
    outputs: values.map((value, i) => ({
      id: `job/${lease.shardId}/${checkpoint.commitNumber}/${i}`,
      sink: 'out',
      value,
    })),
  });
}

describe('SqliteBackend', () => {
  let path: string;
  let backend: SqliteBackend;

  beforeEach(() => {
    path = join(dir, `b-${++n}.db`);
    backend = SqliteBackend.open(path, { job: 'job-a', generation: 1 });
  });
  afterEach(async () => {
    await backend.close();
  });

  it('uses WAL mode', () => {
    expect(backend.db.pragma('journal_mode', { simple: true })).toBe('wal');
  });

  it('reads many addresses with one SQL query', async () => {
    const lease = await backend.acquireLease(SHARD, 'w', T0, TTL);
    const mutations = Array.from({ length: 5_000 }, (_, i) => ({ address: `op/"k${i}"`, value: String(i) }));
    await commit(backend, lease, mutations);
    const before = { ...backend.reads };
    const got = await backend.getMany([...mutations.map((m) => m.address), 'op/"missing"']);
    expect(got.size).toBe(5_000);
    expect(backend.reads.calls - before.calls).toBe(1);
    expect(backend.reads.queries - before.queries).toBe(1);
    expect(backend.reads.entries - before.entries).toBe(5_000);
    // Very large batches are chunked into few queries.
    const huge = Array.from({ length: 45_000 }, (_, i) => `op/"k${i}"`);
    const q = backend.reads.queries;
    expect((await backend.getMany(huge)).size).toBe(5_000);
    expect(backend.reads.queries - q).toBe(3);
  });

  it('scopes everything by (job, generation): several jobs share one file', async () => {
    const db = openSqlite(path);
    const other = new SqliteBackend(db, { job: 'job-b', generation: 1 });
    const nextGen = new SqliteBackend(db, { job: 'job-a', generation: 2 });
    try {
      const a = await backend.acquireLease(SHARD, 'w', T0, TTL);
      const b = await other.acquireLease(SHARD, 'w', T0, TTL); // not blocked by job-a's lease
      expect(b.fence).toBe(1);
      await commit(backend, a, [{ address: 'op/"k"', value: 'A' }], ['a']);
      await commit(other, b, [{ address: 'op/"k"', value: 'B' }], ['b']);
      expect(await backend.getMany(['op/"k"'])).toEqual(new Map([['op/"k"', 'A']]));
      expect(await other.getMany(['op/"k"'])).toEqual(new Map([['op/"k"', 'B']]));
      expect(await nextGen.getMany(['op/"k"'])).toEqual(new Map());
      expect(await nextGen.listCheckpoints()).toEqual([]);
      expect((await other.unpublishedOutputs(SHARD)).map((o) => o.value)).toEqual(['b']);
      expect((await backend.readCheckpoint(SHARD))?.commitNumber).toBe(1);
      expect(SqliteBackend.listScopes(db)).toEqual([
        { job: 'job-a', generation: 1, stateEntries: 1, checkpoints: 1 },
        { job: 'job-b', generation: 1, stateEntries: 1, checkpoints: 1 },
      ]);
      await other.close();
      expect(db.open).toBe(true); // a backend over a shared connection leaves it open
    } finally {
      db.close();
    }
  });

  it('two connections to one file see each other: leases fence across processes', async () => {
    const second = SqliteBackend.open(path, { job: 'job-a', generation: 1 });
    try {
      const first = await backend.acquireLease(SHARD, 'p1', T0, TTL);
      await expect(second.acquireLease(SHARD, 'p2', T0 + 1, TTL)).rejects.toBeInstanceOf(
        LeaseUnavailableError,
      );
      const taken = await second.acquireLease(SHARD, 'p2', T0 + TTL, TTL);
      await expect(commit(backend, first, [{ address: 'op/"z"', value: 'zombie' }])).rejects.toBeInstanceOf(
        FencedError,
      );
      await commit(second, taken, [{ address: 'op/"z"', value: 'ok' }]);
      expect(await backend.getMany(['op/"z"'])).toEqual(new Map([['op/"z"', 'ok']]));
    } finally {
      await second.close();
    }
  });

  it('rejects a checkpoint position moving backwards and non-JSON outputs, changing nothing', async () => {
    const lease = await backend.acquireLease(SHARD, 'w', T0, TTL);
    await commit(backend, lease, [{ address: 'op/"a"', value: '1' }], ['x'], { position: '100' });
    await expect(
      commit(backend, lease, [{ address: 'op/"a"', value: '2' }], [], { position: '99' }),
    ).rejects.toThrow(StateFormatError);
    await expect(commit(backend, lease, [{ address: 'op/"a"', value: '3' }], [{ n: 1n }])).rejects.toThrow(
      StateSerializationError,
    );
    await expect(commit(backend, lease, [], [() => 1])).rejects.toThrow(StateSerializationError);
    expect(await backend.getMany(['op/"a"'])).toEqual(new Map([['op/"a"', '1']]));
    expect((await backend.readCheckpoint(SHARD))?.commitNumber).toBe(1);
    expect((await backend.unpublishedOutputs(SHARD)).map((o) => o.value)).toEqual(['x']);
    // An undefined output value round-trips.
    await commit(backend, lease, [], [undefined], { position: '101' });
    expect((await backend.unpublishedOutputs(SHARD))[1]).toEqual({
      id: `job/${SHARD}/2/0`,
      sink: 'out',
      value: undefined,
    });
  });

  it('iterates entries page by page in address order, by prefix; imports entries and checkpoints', async () => {
    const entries: Array<[string, string]> = [];
    for (let i = 0; i < 25; i++) entries.push([`window-0/"k${String(i).padStart(2, '0')}"`, `w${i}`]);
    for (let i = 0; i < 7; i++) entries.push([`process-0/${i}`, `p${i}`]);
    entries.push(['window-0-x/"other"', 'x'], ['window-0/"😀"', 'emoji']);
    expect(backend.importEntries(entries, 10)).toBe(entries.length);
    expect(backend.countEntries()).toBe(entries.length);
    const sorted = [...entries].sort(([a], [b]) => (Buffer.from(a) < Buffer.from(b) ? -1 : 1));
    expect([...backend.entries({ pageSize: 4 })]).toEqual(sorted);
    expect([...backend.entries({ prefix: 'window-0/', pageSize: 3 })].map(([a]) => a)).toEqual(
      sorted.map(([a]) => a).filter((a) => a.startsWith('window-0/')),
    );
    expect([...backend.entries({ prefix: 'nothing' })]).toEqual([]);
    // Another job's entries are not listed.
    const other = new SqliteBackend(backend.db, { job: 'job-z' });
    expect([...other.entries()]).toEqual([]);

    const checkpoint: ShardCheckpoint = {
      ...initialCheckpoint(SHARD),
      commitNumber: 7,
      position: '123',
      watermark: 5,
    };
    backend.importCheckpoint(checkpoint);
    expect(await backend.readCheckpoint(SHARD)).toEqual(checkpoint);
    expect(() => backend.importCheckpoint(checkpoint)).toThrow(ConfigurationError);
    // The restored shard continues at commit 8.
    const lease = await backend.acquireLease(SHARD, 'w', T0, TTL);
    await commit(backend, lease, []);
    expect((await backend.readCheckpoint(SHARD))?.commitNumber).toBe(8);
  });

  it('validates the scope, refuses use after close, and refuses a file of another schema version', async () => {
    expect(() => SqliteBackend.open(path, { job: '' })).toThrow(ConfigurationError);
    expect(() => SqliteBackend.open(path, { job: 'j', generation: -1 })).toThrow(ConfigurationError);
    expect(() => SqliteBackend.open(path, { job: 'j', generation: 1.5 })).toThrow(ConfigurationError);
    await backend.close();
    await expect(backend.getMany(['a'])).rejects.toBeInstanceOf(ConfigurationError);
    await backend.close(); // twice is fine

    const db = openSqlite(path);
    db.prepare("UPDATE floe_schema SET version = 99 WHERE component = 'backend'").run();
    db.close();
    expect(() => SqliteBackend.open(path, { job: 'j' })).toThrow(StateFormatError);
    backend = SqliteBackend.open(join(dir, `fresh-${n}.db`), { job: 'j' });
  });
});

describe('a database locked by another process', () => {
  it('fails writes with a retryable TransientBackendError that changed nothing, and works once the lock is gone', async () => {
    const path = join(dir, `locked-${++n}.db`);
    const backend = SqliteBackend.open(path, { job: 'j', busyTimeoutMs: 20 });
    const sink = new SqliteTableSink(backend.db, { table: 'floe_out_j' });
    const lease = await backend.acquireLease(SHARD, 'w', T0, TTL);
    // Another process (a long append, a sqlite3 shell) holds the write lock past the busy timeout.
    const other = openSqlite(path);
    other.exec('BEGIN IMMEDIATE');
    const commit = { checkpoint: next(undefined, { position: '1' }), mutations: [], outputs: [] };
    const output = { id: 'j/s/1/0', sink: 'out', value: 1 };
    for (const write of [
      () => backend.commit(lease, commit),
      () => backend.acquireLease(SHARD, 'w', T0, TTL),
      () => backend.renewLease(lease, T0, TTL),
      () => backend.markPublished(SHARD, ['x']),
      () => sink.publish([output]),
    ]) {
      const error = await write().then(
        () => undefined,
        (e: unknown) => e,
      );
      expect(error).toBeInstanceOf(TransientBackendError);
      expect((error as TransientBackendError).retryable).toBe(true);
      expect((error as Error).message).toMatch(/^the SQLite database is locked by another process \(/);
    }
    expect(await backend.readCheckpoint(SHARD)).toBeUndefined();
    other.exec('COMMIT');
    other.close();
    await backend.commit(lease, commit);
    expect((await backend.readCheckpoint(SHARD))?.commitNumber).toBe(1);
    await backend.close();
  });
});

describe('opening the database file', () => {
  it('a file that is not an SQLite database is a ConfigurationError naming it, not an unexpected error', () => {
    const path = join(dir, `not-a-db-${n++}.db`);
    writeFileSync(path, 'hello, not SQLite\n'.repeat(100));
    const error = (() => {
      try {
        openSqlite(path);
      } catch (e) {
        return e;
      }
      return undefined;
    })();
    expect(error).toBeInstanceOf(ConfigurationError);
    expect((error as Error).message).toBe(
      `cannot open the SQLite database ${path}: it is not an SQLite database (is the data dir right?)`,
    );
  });
});
