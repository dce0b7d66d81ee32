/**
 * Edges of the DynamoDB + S3 commit, on the emulators:
 *
 * - a fenced zombie whose checkpoint is large (an S3 object, `cpRef`) cannot replace the
 *   checkpoint object of the commit its successor made under the same commit number;
 * - a shard whose finishing commit took the delta path and stopped after its commit point is
 *   not finished until a lease holder has redone the delta: its children stay waiting, then
 *   start on the parent's final state, with the parent's last outputs in its outbox;
 * - outputs a savepoint carried (committed, not delivered) put back into a new generation's
 *   outbox: one item per commit, a commit's outputs over an item's size in an S3 object;
 * - item sizes are UTF-8 bytes, as DynamoDB counts them;
 * - `maxTransactionActions` moves commits of more actions to the delta path;
 * - a restore's state writes (importEntries) never overwrite an item a commit wrote or deleted;
 * - a state entry over an item (400 KB), or an output that is not JSON, fails the commit with a
 *   StateSerializationError naming it, and nothing of the commit is stored; the worker then
 *   dead-letters the record that produced it (a key that outgrows an item keeps what fits, and
 *   its shard moves on).
 */
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DynamoBackend, DynamoCommitStep } from '../../lib/aws/dynamodb-backend.ts';
import { createBucket } from '../../lib/aws/resources.ts';
import {
  boundedOutOfOrderness,
  type Commit,
  ConfigurationError,
  compile,
  DEAD_LETTER_SINK,
  type DeadLetter,
  FencedError,
  initialCheckpoint,
  type Lease,
  listState,
  type Output,
  type Pipeline,
  passthroughDeserializer,
  pipeline,
  type ShardCheckpoint,
  type ShardInfo,
  type StateMutation,
  StateSerializationError,
  type TimerSpec,
  valueState,
} from '../../lib/core/index.ts';
import { runnableShards } from '../../lib/runtime/coordinator.ts';
import type { WorkerOptions } from '../../lib/runtime/job.ts';
import { MemoryStream } from '../../lib/runtime/testing/memory-stream.ts';
import { runShardWorker } from '../../lib/runtime/worker.ts';
import { type AwsClients, setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';
import { type BackendTables, createBackendTables } from './backend-tables.ts';
import { jobClients } from './job-clients.ts';

const env = await setupAwsTestEnv();
let clients: AwsClients;
const bucket = uniqueName('floe-takeover');
const TTL = 1_000;

beforeAll(async () => {
  clients = jobClients(env);
  await createBucket(clients.s3, bucket);
});
afterAll(() => clients?.destroy());

class Crash extends Error {}

let fixtures = 0;
/** Runs `test` on fresh tables (moto's transactions copy whole tables: keep them small). */
async function withTables(test: (f: BackendTables) => Promise<void>): Promise<void> {
  const f = await createBackendTables(clients, bucket, 'edges', ++fixtures);
  try {
    await test(f);
  } finally {
    await f.close();
  }
}

/** A backend on `f` holding the shard's first lease. */
async function firstLease(
  f: BackendTables,
  shard: string,
): Promise<{ backend: DynamoBackend; lease: Lease }> {
  const backend = f.open();
  return { backend, lease: await backend.acquireLease(shard, 'A', 0, TTL) };
}

/** The shard's first commit, up to position 1. */
const firstCommit = (shard: string, mutations: StateMutation[], outputs: Output[] = []): Commit => ({
  checkpoint: { ...initialCheckpoint(shard), commitNumber: 1, position: '1' },
  mutations,
  outputs,
});

/** A checkpoint over the 200 KB inline limit (6,000 pending timers), so it is an S3 object. */
function largeCheckpoint(shardId: string, commitNumber: number, position: string): ShardCheckpoint {
  const timers: TimerSpec[] = Array.from({ length: 6_000 }, (_, i) => ({
    operator: 'op',
    domain: 'event',
    time: 1_000_000 + i,
    key: `key-${String(i).padStart(6, '0')}`,
    namespace: 'ns',
  }));
  return { ...initialCheckpoint(shardId), commitNumber, position, timers };
}

/** Runs pipeline `p` on `shard` of `stream` to idle with one worker on `backend`; what it published. */
async function runToIdle(
  f: BackendTables,
  backend: DynamoBackend,
  p: Pipeline,
  stream: MemoryStream,
  shard: string,
  options: Pick<WorkerOptions, 'batchSize' | 'onCheckedRetry'>,
) {
  const published: Output[] = [];
  const result = await runShardWorker(
    {
      job: f.job,
      plan: compile(p),
      source: stream,
      backend,
      sink: { publish: async (outputs) => void published.push(...outputs) },
    },
    shard,
    { owner: 'w', untilIdle: true, ...options },
  );
  return { result, published };
}

describe('DynamoDB + S3 commit edges', () => {
  it("a fenced zombie's large checkpoint does not replace its successor's", async () => {
    const shard = 'shardId-000000000000';
    await withTables(async (f) => {
      const a = f.open();
      const leaseA = await a.acquireLease(shard, 'A', 0, TTL);
      await a.commit(leaseA, { checkpoint: largeCheckpoint(shard, 1, '100'), mutations: [], outputs: [] });
      // A stalls past its lease; B takes the shard over and commits 2 up to position 300.
      const b = f.open();
      const leaseB = await b.acquireLease(shard, 'B', TTL + 1, TTL);
      await b.commit(leaseB, {
        checkpoint: largeCheckpoint(shard, 2, '300'),
        mutations: [{ address: 'op/"k"', value: '"B through 300"' }],
        outputs: [],
      });
      // A wakes and commits its own 2 (up to position 200): rejected, and nothing of it stays.
      await expect(
        a.commit(leaseA, {
          checkpoint: largeCheckpoint(shard, 2, '200'),
          mutations: [{ address: 'op/"k"', value: '"A through 200"' }],
          outputs: [],
        }),
      ).rejects.toBeInstanceOf(FencedError);
      const reader = f.open();
      expect((await reader.readCheckpoint(shard))?.position).toBe('300');
      expect((await reader.getMany(['op/"k"'])).get('op/"k"')).toBe('"B through 300"');
    });
  });

  it('a parent whose finishing delta commit stopped after its commit point holds its children back until a lease holder redoes it', async () => {
    const parent = 'shardId-000000000000';
    const child = 'shardId-000000000001';
    const shards: ShardInfo[] = [
      { shardId: parent, parentShardIds: [], hashKeyRange: { start: '0', end: '100' }, closed: true },
      { shardId: child, parentShardIds: [parent], hashKeyRange: { start: '0', end: '100' }, closed: false },
    ];
    await withTables(async (f) => {
      const writer = f.open({
        onStep: (step: DynamoCommitStep) => {
          if (step === 'after-commit-point') throw new Crash('stopped after the commit point');
        },
      });
      const lease = await writer.acquireLease(parent, 'P', 0, TTL);
      // The parent's last commit: shard ended, 150 mutations (over 100 actions: the delta path).
      const mutations = Array.from({ length: 150 }, (_, i) => ({ address: `op/"key-${i}"`, value: `${i}` }));
      const outputs = [0, 1].map((i) => ({ id: `job/${parent}/1/${i}`, sink: 'out', value: i }));
      await expect(
        writer.commit(lease, {
          checkpoint: { ...initialCheckpoint(parent), commitNumber: 1, position: '500', finished: true },
          mutations,
          outputs,
        }),
      ).rejects.toBeInstanceOf(Crash);

      // The coordinator's view: the parent must run again (its worker redoes the delta), not the child.
      const coordinator = f.open();
      const listed = async () => new Map((await coordinator.listCheckpoints()).map((c) => [c.shardId, c]));
      expect((await coordinator.readCheckpoint(parent))?.finished).toBe(false);
      expect(runnableShards(shards, await listed()).map((p) => p.shard.shardId)).toEqual([parent]);

      // A worker takes the parent's lease (after the old one expired): the redo applies the delta.
      const worker = f.open();
      await worker.acquireLease(parent, 'W', TTL + 1, TTL);
      expect((await worker.readCheckpoint(parent))?.finished).toBe(true);
      expect((await worker.unpublishedOutputs(parent)).map((o) => o.id)).toEqual(outputs.map((o) => o.id));
      expect(runnableShards(shards, await listed()).map((p) => p.shard.shardId)).toEqual([child]);
      const seen = await coordinator.getMany(mutations.map((m) => m.address));
      expect(seen.size).toBe(150);
      expect(seen.get('op/"key-149"')).toBe('149');
    });
  });

  it("puts a savepoint's undelivered outputs back into an outbox, idempotently, large commits through S3", async () => {
    const shard = 'shardId-000000000000';
    await withTables(async (f) => {
      const backend = f.open();
      const big = 'x'.repeat(2_000);
      // Commit 3: 300 outputs of 2 KB (over an item's 400 KB); commit 5: two small ones.
      const outputs: Output[] = [
        ...Array.from({ length: 300 }, (_, i) => ({
          id: `job/${shard}/3/${i}`,
          sink: 'out',
          value: { i, big },
        })),
        ...[0, 1].map((i) => ({ id: `job/${shard}/5/${i}`, sink: 'out', value: i })),
      ];
      await backend.importOutputs(shard, outputs);
      await backend.importOutputs(shard, outputs); // a rerun of the restore
      const reader = f.open();
      expect(await reader.unpublishedOutputs(shard)).toEqual(outputs);
      await reader.markPublished(
        shard,
        outputs.map((o) => o.id),
      );
      expect(await f.open().unpublishedOutputs(shard)).toEqual([]);
    });
  });

  it("marks part of a large commit's outputs published: what is left, over an item's 400 KB, stays readable", async () => {
    const shard = 'shardId-000000000000';
    await withTables(async (f) => {
      const { backend, lease } = await firstLease(f, shard);
      // 6 outputs of 100 KB: over an item, so the outbox item points at the S3 delta.
      const outputs: Output[] = Array.from({ length: 6 }, (_, i) => ({
        id: `job/${shard}/1/${i}`,
        sink: 'out',
        value: { i, big: 'x'.repeat(100_000) },
      }));
      await backend.commit(lease, firstCommit(shard, [], outputs));
      // A reader that did not commit them marks one published (the slow path: read, rewrite).
      await f.open().markPublished(shard, [outputs[0]!.id]);
      expect(await f.open().unpublishedOutputs(shard)).toEqual(outputs.slice(1));
      await f.open().markPublished(shard, [outputs[1]!.id, outputs[5]!.id]);
      expect(await f.open().unpublishedOutputs(shard)).toEqual(outputs.slice(2, 5));
      await f.open().markPublished(
        shard,
        outputs.map((o) => o.id),
      );
      expect(await f.open().unpublishedOutputs(shard)).toEqual([]);
    });
  });

  it('measures state items in UTF-8 bytes: 130,000 characters of € (390 KB) are refused before DynamoDB sees them', async () => {
    const shard = 'shardId-000000000000';
    await withTables(async (f) => {
      const { backend, lease } = await firstLease(f, shard);
      const commit = firstCommit(shard, [{ address: 'op/"k"', value: JSON.stringify('€'.repeat(130_000)) }]);
      // Serialization-class, so the worker dead-letters the record that grew it (next test).
      await expect(backend.commit(lease, commit)).rejects.toThrow(StateSerializationError);
      await expect(backend.commit(lease, commit)).rejects.toThrow(/DynamoDB items hold at most 400 KB/);
      expect(await f.open().readCheckpoint(shard)).toBeUndefined();
      expect(backend.maxEntryBytes).toBeLessThan(390_000);
    });
  });

  it('a key whose state outgrows an item does not stop its shard: the worker dead-letters the records that grew it', async () => {
    await withTables(async (f) => {
      const stream = new MemoryStream(1);
      const shard = (await stream.listShards())[0]!.shardId;
      const encoder = new TextEncoder();
      // 50 notes of 10 KB for one user (500 KB in all), a small one for another after each.
      for (let i = 0; i < 50; i++) {
        stream.put('big', encoder.encode(JSON.stringify({ user: 'big', ts: i, text: 'n'.repeat(10_000) })));
        stream.put('small', encoder.encode(JSON.stringify({ user: 'small', ts: i, text: 'n' })));
      }
      const p = pipeline('notes');
      p.source<{ user: string; ts: number; text: string }>()
        .withTimestamps((n) => n.ts, boundedOutOfOrderness(0))
        .keyBy((n) => n.user)
        .process<{ user: string; notes: number }, { notes: ReturnType<typeof listState<string>> }>({
          state: { notes: listState<string>() },
          processElement(n, ctx) {
            ctx.state.notes.add(n.text);
            ctx.emit({ user: n.user, notes: ctx.state.notes.get().length });
          },
        })
        .sink('out');
      const retries: Error[] = [];
      const backend = f.open();
      const { result, published } = await runToIdle(f, backend, p, stream, shard, {
        batchSize: 20,
        onCheckedRetry: (e) => retries.push(e),
      });

      expect(retries).toEqual([expect.any(StateSerializationError)]);
      expect(result.records).toBe(100);
      expect((await backend.readCheckpoint(shard))?.position).toBeDefined();
      const dead = published.filter((o) => o.sink === DEAD_LETTER_SINK).map((o) => o.value as DeadLetter);
      const counts = (user: string): number[] =>
        published
          .filter((o) => o.sink === 'out' && (o.value as { user: string }).user === user)
          .map((o) => (o.value as { notes: number }).notes);
      // big keeps the notes that fit (about 34 of 10 KB), in order; every later one is dead-lettered.
      const kept = counts('big').length;
      expect(counts('big')).toEqual(Array.from({ length: kept }, (_, i) => i + 1));
      expect(kept).toBeGreaterThan(30);
      expect(dead.length).toBe(50 - kept);
      expect(dead.every((l) => l.reason === 'state-size' && l.partitionKey === 'big')).toBe(true);
      expect(counts('small')).toEqual(Array.from({ length: 50 }, (_, i) => i + 1));
      const big = (await f.open().getMany(['process-0/"big"'])).get('process-0/"big"')!;
      const bytes = Buffer.byteLength('process-0/"big"') + Buffer.byteLength(big);
      expect(bytes).toBeLessThanOrEqual(backend.maxEntryBytes);
      expect(bytes + 10_000).toBeGreaterThan(backend.maxEntryBytes); // one more note would not fit
    });
  });

  it('a key too long for a DynamoDB partition key (2 KB) does not stop its shard: its records are dead-lettered', async () => {
    await withTables(async (f) => {
      const stream = new MemoryStream(1);
      const shard = (await stream.listShards())[0]!.shardId;
      const encoder = new TextEncoder();
      const long = 'u'.repeat(3_000);
      for (let i = 0; i < 3; i++) {
        stream.put('p', encoder.encode(JSON.stringify({ user: 'small', ts: i })));
        stream.put('p', encoder.encode(JSON.stringify({ user: long, ts: i })));
      }
      const p = pipeline('long-keys');
      p.source<{ user: string; ts: number }>()
        .withTimestamps((n) => n.ts, boundedOutOfOrderness(0))
        .keyBy((n) => n.user)
        .process<{ user: string; n: number }, { n: ReturnType<typeof listState<number>> }>({
          state: { n: listState<number>() },
          processElement(e, ctx) {
            ctx.state.n.add(e.ts);
            ctx.emit({ user: e.user.slice(0, 5), n: ctx.state.n.get().length });
          },
        })
        .sink('out');
      const backend = f.open();
      const { result, published } = await runToIdle(f, backend, p, stream, shard, { batchSize: 2 });
      expect(result.records).toBe(6);
      const out = published.filter((o) => o.sink === 'out').map((o) => o.value);
      expect(out).toEqual([1, 2, 3].map((n) => ({ user: 'small', n })));
      const dead = published.filter((o) => o.sink === DEAD_LETTER_SINK).map((o) => o.value as DeadLetter);
      expect(dead.map((d) => d.reason)).toEqual(['state-size', 'state-size', 'state-size']);
    });
  });

  it("a key whose events reach two unrelated shards stops the second when it reads the first one's state, naming both (Lambda workers run one shard each)", async () => {
    await withTables(async (f) => {
      const stream = new MemoryStream(2);
      const [a, b] = (await stream.listShards()).map((s) => s.shardId) as [string, string];
      // The partition key is not the key: the same user reaches both shards.
      for (let i = 0; i < 8; i++) stream.put(`p${i}`, { user: 'shared', ts: i });
      expect(stream.records(a).length).toBeGreaterThan(0);
      expect(stream.records(b).length).toBeGreaterThan(0);
      const p = pipeline('not-co-partitioned');
      p.source<{ user: string; ts: number }>({ deserializer: passthroughDeserializer() })
        .withTimestamps((e) => e.ts, boundedOutOfOrderness(0))
        .keyBy((e) => e.user)
        .process<number, { n: ReturnType<typeof valueState<number>> }>({
          state: { n: valueState<number>() },
          processElement(_e, ctx) {
            const n = (ctx.state.n.value() ?? 0) + 1;
            ctx.state.n.update(n);
            ctx.emit(n);
          },
        })
        .sink('out');
      const first = await runToIdle(f, f.open(), p, stream, a, {});
      expect(first.published.map((o) => o.value)).toEqual(stream.records(a).map((_, i) => i + 1));
      const error = await runToIdle(f, f.open(), p, stream, b, {}).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ConfigurationError);
      expect((error as Error).message).toContain(
        `keyed state entry process-0/"shared" was written by shard ${a} and is now read by shard ${b} for events of its key, and neither shard descends from the other`,
      );
      // A child of the first shard (one deeper) takes its keys over as usual.
      const child = await f.open().getMany(['process-0/"shared"'], { shardId: 'child', depth: 1 });
      expect(child.get('process-0/"shared"')).toBeDefined();
    });
  });

  it("a commit over a key another shard of the same depth committed fails with the co-partitioning error, storing nothing; a child shard writes its parent's keys", async () => {
    await withTables(async (f) => {
      const [a, b] = ['shardId-000000000000', 'shardId-000000000001'];
      const k = { address: 'op/"k"', value: '{"k":"k","s":{"n":1}}' };
      const first = await firstLease(f, a);
      await first.backend.commit(first.lease, firstCommit(a, [k]));
      // Shard b created the same key on its own (it never read a's item) and commits it.
      const second = await firstLease(f, b);
      const error = await second.backend.commit(second.lease, firstCommit(b, [k])).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(ConfigurationError);
      expect((error as Error).message).toContain(
        `keyed state entry op/"k" was written by shard ${a} and now by shard ${b}, and neither shard descends from the other`,
      );
      expect(await second.backend.readCheckpoint(b)).toBeUndefined();
      // A child of a (one deeper) takes the key over.
      const child = await firstLease(f, 'shardId-000000000002');
      const childCommit = firstCommit('shardId-000000000002', [{ ...k, value: '{"k":"k","s":{"n":2}}' }]);
      await child.backend.commit(child.lease, {
        ...childCommit,
        checkpoint: { ...childCommit.checkpoint, depth: 1 },
      });
      expect((await child.backend.getMany([k.address])).get(k.address)).toBe('{"k":"k","s":{"n":2}}');
    });
  });

  it('a delta commit over a key another shard of the same depth committed completes without it, then fails with the co-partitioning error (both apply modes)', async () => {
    for (const deltaApply of ['items', 'transactions'] as const) {
      await withTables(async (f) => {
        const [a, b] = ['shardId-000000000000', 'shardId-000000000001'];
        const first = await firstLease(f, a);
        await first.backend.commit(first.lease, firstCommit(a, [{ address: 'op/"k"', value: '"a"' }]));
        // Shard b's commit of the same key and three of its own takes the delta path.
        const backend = f.open({ maxTransactionActions: 2, deltaApply });
        const lease = await backend.acquireLease(b, 'B', 0, TTL);
        const mutations = ['k', 'b1', 'b2', 'b3'].map((k) => ({ address: `op/"${k}"`, value: '"b"' }));
        const error = await backend.commit(lease, firstCommit(b, mutations)).catch((e: unknown) => e);
        expect(error, deltaApply).toBeInstanceOf(ConfigurationError);
        expect((error as Error).message).toContain(
          `keyed state entry op/"k" was written by shard ${a} and now by shard ${b}`,
        );
        expect(backend.metrics.deltaCommits).toBe(1);
        // The commit took effect without the key: a's value stays, b's own keys are there.
        const stored = await f.open().getMany(mutations.map((m) => m.address));
        expect(Object.fromEntries(stored)).toEqual({
          'op/"k"': '"a"',
          'op/"b1"': '"b"',
          'op/"b2"': '"b"',
          'op/"b3"': '"b"',
        });
        expect((await f.open().readCheckpoint(b))?.commitNumber).toBe(1);
      });
    }
  });

  it('refuses an output that is not JSON with a StateSerializationError naming it, storing nothing', async () => {
    const shard = 'shardId-000000000000';
    await withTables(async (f) => {
      const { backend, lease } = await firstLease(f, shard);
      const commit = firstCommit(
        shard,
        [{ address: 'op/"k"', value: '1' }],
        [
          { id: `job/${shard}/1/0`, sink: 'out', value: 1 },
          { id: `job/${shard}/1/1`, sink: 'out', value: { n: 2n } },
        ],
      );
      const error = await backend.commit(lease, commit).catch((e: unknown) => e);
      expect(error).toBeInstanceOf(StateSerializationError);
      expect((error as Error).message).toContain(
        `output job/${shard}/1/1 to sink "out" is not JSON-serializable`,
      );
      expect(await f.open().readCheckpoint(shard)).toBeUndefined();
      expect((await f.open().getMany(['op/"k"'])).size).toBe(0);
    });
  });

  it('maxTransactionActions: a commit of more actions takes the delta path, one within it a transaction; bad values are refused', async () => {
    const shard = 'shardId-000000000000';
    await withTables(async (f) => {
      const backend = f.open({ maxTransactionActions: 4 });
      const lease = await backend.acquireLease(shard, 'A', 0, TTL);
      const entries = (from: number, n: number): StateMutation[] =>
        Array.from({ length: n }, (_, i) => ({ address: `op/"k${from + i}"`, value: String(from + i) }));
      // 1 checkpoint + 3 mutations = 4 actions: a transaction.
      await backend.commit(lease, firstCommit(shard, entries(0, 3)));
      expect(backend.metrics).toMatchObject({ transactions: 1, deltaCommits: 0 });
      // 1 checkpoint + 4 mutations = 5 actions: the delta path.
      await backend.commit(lease, {
        checkpoint: { ...initialCheckpoint(shard), commitNumber: 2, position: '2' },
        mutations: entries(3, 4),
        outputs: [],
      });
      expect(backend.metrics).toMatchObject({ transactions: 1, deltaCommits: 1 });
      const addresses = entries(0, 7).map((m) => m.address);
      const stored = await f.open().getMany(addresses);
      expect(addresses.map((a) => stored.get(a))).toEqual(['0', '1', '2', '3', '4', '5', '6']);
      for (const bad of [0, 101, 2.5, Number.NaN]) {
        expect(() => f.open({ maxTransactionActions: bad }), String(bad)).toThrow(
          /^maxTransactionActions must be an integer from 1 to 100 \(DynamoDB's limit per TransactWriteItems\); received /,
        );
      }
    });
  });

  it("a stalled restore's writes never overwrite what the generation's workers committed (both apply modes)", async () => {
    const shard = 'shardId-000000000000';
    for (const deltaApply of ['items', 'transactions'] as const) {
      await withTables(async (f) => {
        const restore = f.open({ deltaApply });
        const saved: Array<readonly [string, string]> = [
          ['op/"a"', '"saved"'],
          ['op/"b"', '"saved"'],
        ];
        await restore.importEntries(saved);
        await restore.importCheckpoint({ ...initialCheckpoint(shard), commitNumber: 3, position: '3' });
        // The generation goes live: a worker changes a and deletes b.
        const worker = f.open();
        const lease = await worker.acquireLease(shard, 'W', 0, TTL);
        await worker.commit(lease, {
          checkpoint: { ...initialCheckpoint(shard), commitNumber: 4, position: '4' },
          mutations: [
            { address: 'op/"a"', value: '"committed"' },
            { address: 'op/"b"', value: null },
          ],
          outputs: [],
        });
        // The first restore process wakes up and writes its batch (plus an entry nobody wrote).
        await restore.importEntries([...saved, ['op/"c"', '"saved"']]);
        const stored = await f.open().getMany(['op/"a"', 'op/"b"', 'op/"c"']);
        expect(Object.fromEntries(stored), deltaApply).toEqual({
          'op/"a"': '"committed"',
          'op/"c"': '"saved"',
        });
        expect(restore.metrics.skippedNewer, deltaApply).toBe(2);
      });
    }
  });
});
