/** The job record's say over workers, and `floe run`'s view of it. */
import { describe, expect, it } from 'vitest';
import type { OperatorSchema } from '../core/index.ts';
import { SqliteJobStore } from '../embedded/job-store.ts';
import { openSqlite } from '../embedded/sqlite.ts';
import {
  decide,
  generationOf,
  type JobRecord,
  type JobStore,
  MemoryJobStore,
  resolveJobForRun,
  updateJob,
} from './job-control.ts';

const record = (over: Partial<JobRecord>): JobRecord => ({
  job: 'j',
  generation: 0,
  nextGeneration: 1,
  state: 'running',
  stream: 's',
  version: 1,
  updatedAt: 0,
  ...over,
});

describe('job control', () => {
  it('tells workers to run, pause for a live savepoint, or stop', () => {
    expect(decide(undefined, 0, 0)).toEqual({ action: 'run' });
    expect(decide(record({}), 0, 0)).toEqual({ action: 'run' });
    const pausing = record({
      state: 'pausing',
      savepoint: { id: 'sp', owner: 'o', startedAt: 0, expiresAt: 100, stop: false },
    });
    expect(decide(pausing, 0, 50)).toEqual({ action: 'pause', reason: 'savepoint sp is being taken' });
    // An interrupted savepoint (its hold expired) does not stall the job.
    expect(decide(pausing, 0, 100)).toEqual({ action: 'run' });
    expect(decide(record({ state: 'stopped', stoppedBy: { savepointId: 'sp', at: 0 } }), 0, 0)).toEqual({
      action: 'stop',
      reason: 'job j was stopped with savepoint sp',
    });
    expect(decide(record({ generation: 2 }), 1, 0)).toMatchObject({
      action: 'stop',
      reason: expect.stringMatching(/now runs state generation 2; this worker ran generation 1/),
    });
  });

  it('creates the record on first run and refuses a stopped job or another stream', async () => {
    const store = new MemoryJobStore();
    const options = { job: 'j', stream: 's', pipeline: { name: 'p', version: '1' }, operators: [] };
    const first = await resolveJobForRun(store, options);
    expect(first).toMatchObject({ generation: 0, record: { state: 'running', version: 1 } });
    await expect(resolveJobForRun(store, { ...options, stream: 'other' })).rejects.toThrow(
      /job j reads stream "s", not "other"/,
    );
    await updateJob(store, 'j', (c) => ({
      ...c!,
      state: 'stopped',
      stoppedBy: { savepointId: 'sp', at: 0 },
    }));
    await expect(resolveJobForRun(store, options)).rejects.toThrow(
      /job j was stopped with savepoint sp .*resume it with 'floe replay --from-savepoint sp'/,
    );
  });

  it("refuses a run whose pipeline would misread the job's stored state (a TTL added, a kind changed, an operator gone)", async () => {
    const store = new MemoryJobStore();
    const counter = (state: OperatorSchema['state']): OperatorSchema => ({
      uid: 'count',
      kind: 'process',
      state,
    });
    const v1 = [counter({ n: { kind: 'value', ttl: false }, seen: { kind: 'list', ttl: false } })];
    const options = { job: 'j', stream: 's', pipeline: { name: 'p', version: '1' }, operators: v1 };
    await resolveJobForRun(store, options);
    const run = (operators: OperatorSchema[]) => resolveJobForRun(store, { ...options, operators });

    await expect(
      run([counter({ n: { kind: 'value', ttl: true }, seen: { kind: 'list', ttl: false } })]),
    ).rejects.toThrow(
      /^pipeline "p" cannot run on the state job j holds: state "n" of operator "count" had no TTL and has one now \(TTL state stores write times\)\. A job keeps its state layout while it runs\. To change it, take a savepoint and replay it into the job .* or run the new pipeline as another job \(--job <new id>\)\.$/,
    );
    await expect(run([counter({ n: { kind: 'map', ttl: false } })])).rejects.toThrow(
      /state "n" of operator "count" was value state and is now map state/,
    );
    await expect(run([])).rejects.toThrow(
      /operator "count" has state in job j's stored state but pipeline "p" has no operator with that uid/,
    );
    // Refused runs leave the record as it was.
    expect((await store.get('j'))?.operators).toEqual(v1);

    // New state and dropped state names are fine: they start empty, or are no longer read.
    const v2 = [counter({ n: { kind: 'value', ttl: false }, extra: { kind: 'map', ttl: true } })];
    await expect(run(v2)).resolves.toMatchObject({ record: { operators: v2 } });
  });

  it('writes with compare-and-set', async () => {
    const store = new MemoryJobStore();
    expect(await store.put(record({ version: 1 }), undefined)).toBe(true);
    expect(await store.put(record({ version: 2 }), undefined)).toBe(false);
    expect(await store.put(record({ version: 2 }), 5)).toBe(false);
    expect(await store.put(record({ version: 2 }), 1)).toBe(true);
  });

  // The DynamoDB store is tested the same way in infra-tests/aws/savepoint.test.ts.
  for (const [name, open] of [
    ['memory', () => new MemoryJobStore()],
    ['SQLite', () => new SqliteJobStore(openSqlite(':memory:'))],
  ] as const) {
    it(`a removed record leaves its next generation: the id reads as absent, and a later job of it starts past it and continues its versions (${name})`, async () => {
      const store: JobStore = open();
      const options = { job: 'j', stream: 's', pipeline: { name: 'p', version: '1' }, operators: [] };
      const restoring = record({ state: 'restoring', nextGeneration: 3, version: 4 });
      expect(await store.put(restoring, undefined)).toBe(true);
      expect((await store.lookup('j')).freed).toBeUndefined();
      expect(await store.delete({ ...restoring, version: 3 })).toBe(false);
      expect(await store.delete(restoring)).toBe(true);
      expect(await store.delete(restoring)).toBe(false);
      expect(await store.get('j')).toBeUndefined();
      expect(await store.restoresFrom('sp')).toEqual([]);
      expect((await store.lookup('j')).freed).toEqual({ job: 'j', nextGeneration: 3, version: 5 });
      expect(generationOf(await store.lookup('j'))).toBe(3);
      expect(generationOf(await store.lookup('j'), 7)).toBe(7);
      // A write that read the removed record, or no record at all, does not land.
      expect(await store.put(record({ version: 5 }), 4)).toBe(false);
      expect(await store.put(record({ version: 1 }), undefined)).toBe(false);
      // floe run of the id: a new record past the removed one's generations and versions.
      const run = await resolveJobForRun(store, options);
      expect(run).toMatchObject({ generation: 3, record: { generation: 3, nextGeneration: 4, version: 6 } });
      expect((await store.lookup('j')).freed).toBeUndefined();
      expect(await store.lookup('j')).toEqual({ record: run.record, freed: undefined });
      // Removed again: what it leaves follows the new record.
      expect(await store.delete(run.record)).toBe(true);
      expect((await store.lookup('j')).freed).toEqual({ job: 'j', nextGeneration: 4, version: 7 });
      // A deployment's generation above it wins.
      expect(await resolveJobForRun(store, { ...options, generation: 9 })).toMatchObject({ generation: 9 });
    });
  }
});
