/**
 * The apply step of large (S3 delta) commits on the emulators, for both variants of
 * DynamoBackendOptions.deltaApply ('items': one conditional PutItem per item; 'transactions':
 * TransactWriteItems chunks of at most 100 conditional puts):
 *
 * - partial redo: some items of the pending delta are already newer in the table (mixed into
 *   every chunk, puts and deletes alike): the redo writes the others and leaves the newer ones
 *   untouched; a transaction cancelled by those items is sent again without them;
 * - zombie: a writer that passed its commit point stalls before applying; the next lease holder
 *   redoes the delta and commits newer state over it (a delta commit and a small transaction
 *   commit, writes and deletes); the stale writer then applies its old delta and changes nothing;
 * - reshard zombie: a parent's stalled writer applies its delta after a child shard (one reshard
 *   deeper, ShardCheckpoint.depth) wrote some of its keys: the child's items stay;
 * - zombie and outbox: the next lease holder redoes the delta and publishes its outputs (deleting
 *   the outbox item); the stale writer's apply does not write the outbox item again, and its
 *   commit is rejected with FencedError (it took effect, but its worker must not publish again);
 * - heartbeat: a holder whose apply (or redo) outlasts the lease TTL keeps its lease, so no other
 *   invocation takes the shard over meanwhile; a holder whose lease was taken over regardless
 *   learns it at its next renewal and stops its apply with FencedError, writing nothing more.
 *
 * The zombie tests turn the heartbeat off (DynamoBackendOptions.leaseHeartbeat): they model a
 * writer stalled past its lease, a frozen process that renews nothing.
 *
 * Every test has its own tables: moto's TransactWriteItems deep-copies the table once per action,
 * and its transactions are not isolated from concurrent requests (./moto-transactions.ts, which
 * the client here goes through).
 */
import { GetItemCommand, PutItemCommand, UpdateItemCommand } from '@aws-sdk/client-dynamodb';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { DeltaApplyMode, DynamoBackend, DynamoCommitStep } from '../../lib/aws/dynamodb-backend.ts';
import { createBucket } from '../../lib/aws/resources.ts';
import {
  type Commit,
  FencedError,
  initialCheckpoint,
  LeaseUnavailableError,
  type Output,
  type ShardCheckpoint,
  type StateMutation,
} from '../../lib/core/index.ts';
import { type AwsClients, setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';
import { type BackendTables, createBackendTables } from './backend-tables.ts';
import { jobClients } from './job-clients.ts';

const env = await setupAwsTestEnv();
let clients: AwsClients;
const bucket = uniqueName('floe-apply');
const SHARD = 'shardId-000000000000';
const TTL = 1_000;
// The heartbeat tests run in real time and need a renewal (every third of the TTL) to land before
// the lease expires: a few seconds of slack, so that a loaded machine or emulator does not fail them.
const HEARTBEAT_TTL = 3_000;

beforeAll(async () => {
  clients = jobClients(env);
  await createBucket(clients.s3, bucket);
});
afterAll(() => clients?.destroy());

class Crash extends Error {}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

let fixtures = 0;
/** Fresh tables; its backends apply deltas the `mode` way. */
async function fixture(mode: DeltaApplyMode): Promise<BackendTables> {
  const tables = await createBackendTables(clients, bucket, 'apply', ++fixtures);
  return { ...tables, open: (overrides = {}) => tables.open({ deltaApply: mode, ...overrides }) };
}

const checkpoint = (commitNumber: number): ShardCheckpoint => ({
  ...initialCheckpoint(SHARD),
  commitNumber,
  position: String(1000 + commitNumber),
});

const outputs = (commitNumber: number, n: number): Output[] =>
  Array.from({ length: n }, (_, i) => ({
    id: `job/${SHARD}/${commitNumber}/${i}`,
    sink: 'out',
    value: { commitNumber, i },
  }));

const key = (i: number): string => `op/key-${String(i).padStart(4, '0')}`;

/** Commit 1: 150 keys, keys 0..139 written `v1-i`, keys 140..149 deleted. */
function deltaCommit(): Commit {
  const mutations: StateMutation[] = Array.from({ length: 150 }, (_, i) => ({
    address: key(i),
    value: i < 140 ? `v1-${i}` : null,
  }));
  return { checkpoint: checkpoint(1), mutations, outputs: outputs(1, 3) };
}

const allKeys = Array.from({ length: 150 }, (_, i) => key(i));

async function stateOf(backend: DynamoBackend): Promise<Record<string, string>> {
  return Object.fromEntries([...(await backend.getMany(allKeys))].sort());
}

/** The lease item of SHARD (owner, leaseExpiresAt, fence, pendingDelta, ...). */
async function leaseItem(f: BackendTables): Promise<Record<string, string | undefined>> {
  const res = await clients.dynamodb.send(
    new GetItemCommand({
      TableName: f.controlTable,
      Key: { pk: { S: `${f.job}#0` }, sk: { S: `shard#${SHARD}` } },
      ConsistentRead: true,
    }),
  );
  return Object.fromEntries(Object.entries(res.Item ?? {}).map(([k, v]) => [k, v.S ?? v.N]));
}

/** State after deltaCommit(): keys 0..139 hold `v1-i`. */
const committedState = (): Record<string, string> =>
  Object.fromEntries(allKeys.slice(0, 140).map((address, i) => [address, `v1-${i}`]));

/** The raw item of a state key (tombstones included), or undefined. */
async function rawItem(f: BackendTables, address: string): Promise<Record<string, unknown> | undefined> {
  const res = await clients.dynamodb.send(
    new GetItemCommand({
      TableName: f.stateTable,
      Key: { pk: { S: `${f.job}#0#${address}` } },
      ConsistentRead: true,
    }),
  );
  if (res.Item === undefined) return undefined;
  return Object.fromEntries(Object.entries(res.Item).map(([k, v]) => [k, v.S ?? v.N]));
}

/**
 * Writer A (lease on SHARD) commits deltaCommit() and stalls at `step` until `wake()`; resolves
 * once it stalls. `zombieCommit` is its pending commit (never an unhandled rejection).
 */
async function stalledWriter(f: BackendTables, step: DynamoCommitStep) {
  let stalled!: () => void;
  const reached = new Promise<void>((resolve) => {
    stalled = resolve;
  });
  let wake!: () => void;
  const woken = new Promise<void>((resolve) => {
    wake = resolve;
  });
  const zombie = f.open({
    leaseHeartbeat: false,
    onStep: async (s: DynamoCommitStep) => {
      if (s !== step) return;
      stalled();
      await woken;
    },
  });
  const leaseA = await zombie.acquireLease(SHARD, 'A', 0, TTL);
  const zombieCommit = zombie.commit(leaseA, deltaCommit());
  zombieCommit.catch(() => {});
  await reached;
  return { zombie, leaseA, zombieCommit, wake };
}

/**
 * A backend on `f` whose apply (a commit's or a redo's) stalls halfway for 2.5 HEARTBEAT_TTLs, in
 * real time, with the heartbeat on; `reached` resolves when it stalls.
 */
function slowApplier(f: BackendTables): { backend: DynamoBackend; reached: Promise<void> } {
  let stalled!: () => void;
  const reached = new Promise<void>((resolve) => {
    stalled = resolve;
  });
  const backend = f.open({
    onStep: async (s: DynamoCommitStep) => {
      if (s !== 'mid-apply') return;
      stalled();
      await sleep(2.5 * HEARTBEAT_TTL);
    },
  });
  return { backend, reached };
}

for (const mode of ['transactions', 'items'] as const) {
  describe(`delta apply: ${mode}`, () => {
    it('partial redo: items already newer are left untouched, the others are applied', async () => {
      const f = await fixture(mode);
      try {
        // The writer commits (the commit point) and dies before applying anything. Its clock
        // stands still too: a heartbeat during a slow commit would otherwise move its lease past
        // B's acquisition below by the commit's real duration.
        const writer = f.open({
          clock: () => 0,
          onStep: (step: DynamoCommitStep) => {
            if (step === 'after-commit-point') throw new Crash('after the commit point');
          },
        });
        const lease = await writer.acquireLease(SHARD, 'A', 0, TTL);
        await expect(writer.commit(lease, deltaCommit())).rejects.toBeInstanceOf(Crash);

        // Some items are newer than the delta (a later fence of the same shard), spread over every
        // chunk: every 7th key, puts and deletes; some keys hold an older restore version.
        const newer = allKeys.filter((_, i) => i % 7 === 3);
        for (const address of newer) {
          await clients.dynamodb.send(
            new PutItemCommand({
              TableName: f.stateTable,
              Item: {
                pk: { S: `${f.job}#0#${address}` },
                v: { S: `newer-${address}` },
                d: { N: '0' },
                sh: { S: SHARD },
                f: { N: '5' },
                c: { N: '1' },
              },
            }),
          );
        }
        const restored = allKeys.filter((_, i) => i % 7 === 5);
        for (const address of restored) {
          await clients.dynamodb.send(
            new PutItemCommand({
              TableName: f.stateTable,
              Item: {
                pk: { S: `${f.job}#0#${address}` },
                v: { S: `restored-${address}` },
                sh: { S: '~restore' },
                f: { N: '0' },
                c: { N: '0' },
              },
            }),
          );
        }

        // The next lease holder redoes the pending delta. Its clock stands still, as the test's
        // `now`s do: its heartbeat does not move its lease past C's acquisition by the redo's
        // real duration.
        const next = f.open({ clock: () => 0 });
        await next.acquireLease(SHARD, 'B', TTL + 1, TTL);
        const expected: Record<string, string> = {};
        for (const [i, address] of allKeys.entries()) {
          if (newer.includes(address)) expected[address] = `newer-${address}`;
          else if (i < 140) expected[address] = `v1-${i}`;
        }
        expect(await stateOf(next)).toEqual(Object.fromEntries(Object.entries(expected).sort()));
        expect(next.metrics.skippedNewer).toBe(newer.length);
        if (mode === 'transactions') {
          // 150 items in two chunks, each cancelled once by its newer items and sent again.
          expect(next.metrics.applyTransactions).toBe(4);
          expect(next.metrics.itemsWritten).toBe(150 + 150 - newer.length);
        } else {
          expect(next.metrics.applyTransactions).toBe(0);
          expect(next.metrics.itemsWritten).toBe(150);
        }
        // A delete that was not newer is a tombstone with the delta's version; a newer one is untouched.
        const deleted = key(141);
        expect(await rawItem(f, deleted)).toMatchObject({ sh: SHARD, f: '1', c: '1' });
        expect((await rawItem(f, deleted))?.v).toBeUndefined();
        expect((await rawItem(f, deleted))?.ttl).toBeDefined();
        expect(await rawItem(f, key(143))).toMatchObject({ v: `newer-${key(143)}`, f: '5' });
        // The commit is complete: checkpoint, outbox, no pending delta left to redo.
        expect((await next.readCheckpoint(SHARD))?.commitNumber).toBe(1);
        expect((await next.unpublishedOutputs(SHARD)).map((o) => o.id)).toEqual(
          outputs(1, 3).map((o) => o.id),
        );
        const again = f.open();
        await again.acquireLease(SHARD, 'C', 3 * TTL, TTL);
        expect(again.metrics.writeRequests).toBe(0);
      } finally {
        await f.close();
      }
    });

    it('zombie: a stale writer applying an old delta never overwrites newer state', async () => {
      const f = await fixture(mode);
      try {
        // Writer A passes its commit point, then stalls before applying its delta.
        const { zombie, leaseA, zombieCommit, wake } = await stalledWriter(f, 'after-commit-point');

        // A's lease expires; B takes over (redoing A's delta), then commits newer state over it:
        // commit 2, a delta (120 keys rewritten, 5 deleted), and commit 3, a small transaction.
        const b = f.open();
        const leaseB = await b.acquireLease(SHARD, 'B', TTL + 1, TTL);
        expect(leaseB.fence).toBeGreaterThan(leaseA.fence);
        const commit2: StateMutation[] = [
          ...Array.from({ length: 120 }, (_, i) => ({ address: key(i * 1 + 10), value: `v2-${i + 10}` })),
          ...[0, 1, 2, 3, 4].map((i) => ({ address: key(i), value: null })),
        ];
        await b.commit(leaseB, { checkpoint: checkpoint(2), mutations: commit2, outputs: outputs(2, 2) });
        await b.commit(leaseB, {
          checkpoint: checkpoint(3),
          mutations: [
            { address: key(5), value: 'v3-5' },
            { address: key(145), value: 'v3-145' },
            { address: key(20), value: null },
          ],
          outputs: [],
        });
        expect(b.metrics.deltaCommits).toBe(1);
        const before = {
          state: await stateOf(b),
          checkpoint: await b.readCheckpoint(SHARD),
        };
        expect(before.state[key(5)]).toBe('v3-5');
        expect(before.state[key(20)]).toBeUndefined();
        expect(before.state[key(0)]).toBeUndefined();
        expect(before.state[key(50)]).toBe('v2-50');
        expect(before.state[key(7)]).toBe('v1-7');

        // The zombie wakes up and applies its old delta: nothing B wrote changes. Its commit took
        // effect (B redid it), and its apply then finds the delta done under another fence.
        wake();
        await expect(zombieCommit).rejects.toBeInstanceOf(FencedError);
        expect({ state: await stateOf(b), checkpoint: await b.readCheckpoint(SHARD) }).toEqual(before);
        // Every key B wrote or deleted after the redo was skipped by the zombie's apply.
        const touchedByB = new Set([...commit2.map((m) => m.address), key(5), key(145), key(20)]);
        expect(zombie.metrics.skippedNewer).toBe(allKeys.filter((k) => touchedByB.has(k)).length);
        if (mode === 'transactions') expect(zombie.metrics.applyTransactions).toBeGreaterThan(2);
        // B's fence still rules.
        await expect(zombie.renewLease(leaseA, 2 * TTL, TTL)).rejects.toThrow(/rejected/);
      } finally {
        await f.close();
      }
    });

    it("reshard zombie: a parent's stale apply never overwrites its child's newer state", async () => {
      const f = await fixture(mode);
      try {
        // Parent writer A passes its commit point, then stalls before applying its delta.
        const { zombie, zombieCommit, wake } = await stalledWriter(f, 'after-commit-point');

        // A's lease expires; B redoes A's delta. Then a child shard (one reshard deeper) owns
        // the keys and writes some of them: a put, a delete, and a key the parent had deleted.
        const b = f.open();
        await b.acquireLease(SHARD, 'B', TTL + 1, TTL);
        const CHILD = 'shardId-000000000002';
        const leaseC = await b.acquireLease(CHILD, 'C', TTL + 1, TTL);
        await b.commit(leaseC, {
          checkpoint: { ...initialCheckpoint(CHILD), depth: 1, commitNumber: 1, position: '2001' },
          mutations: [
            { address: key(5), value: 'child-5' },
            { address: key(7), value: null },
            { address: key(140), value: 'child-140' },
          ],
          outputs: [],
        });
        const before = await stateOf(b);
        expect(before[key(5)]).toBe('child-5');
        expect(before[key(7)]).toBeUndefined();
        expect(before[key(140)]).toBe('child-140');
        expect(before[key(6)]).toBe('v1-6');

        // The parent's zombie wakes up and applies its old delta: the child's items stay.
        wake();
        await expect(zombieCommit).rejects.toBeInstanceOf(FencedError);
        expect(await stateOf(b)).toEqual(before);
        expect(zombie.metrics.skippedNewer).toBe(3);
        expect(await rawItem(f, key(5))).toMatchObject({ sh: CHILD, d: '1' });
      } finally {
        await f.close();
      }
    });

    for (const [stallAt, what] of [
      ['after-commit-point', 'does not resurrect an outbox item the new holder published'],
      ['after-apply', 'that wrote its outbox item cannot end the delta the new holder redid'],
    ] as const) {
      it(`zombie stalled ${stallAt}: a stale writer ${what}; its commit rejects, so it publishes nothing`, async () => {
        const f = await fixture(mode);
        try {
          // Writer A passes its commit point for a delta commit with outputs (or also writes its
          // state and outbox item), then stalls.
          const { zombie, zombieCommit, wake } = await stalledWriter(f, stallAt);

          // A's lease expires; B takes over (redoing A's delta), publishes commit 1's outputs and
          // marks them published: the outbox item is deleted.
          const b = f.open();
          await b.acquireLease(SHARD, 'B', TTL + 1, TTL);
          const ids = outputs(1, 3).map((o) => o.id);
          expect((await b.unpublishedOutputs(SHARD)).map((o) => o.id)).toEqual(ids);
          await b.markPublished(SHARD, ids);
          expect(await b.unpublishedOutputs(SHARD)).toEqual([]);
          const state = await stateOf(b);

          // A wakes up and finishes its apply: the outbox item stays deleted (no second publish).
          wake();
          const [settled] = await Promise.allSettled([zombieCommit]);
          expect(await b.unpublishedOutputs(SHARD)).toEqual([]);
          expect(await stateOf(b)).toEqual(state);
          expect((await b.readCheckpoint(SHARD))?.commitNumber).toBe(1);
          expect(zombie.metrics.outboxSkipped).toBe(stallAt === 'after-commit-point' ? 1 : 0);
          // A's commit took effect, but A learns it lost the lease, so its worker stops instead of
          // publishing the outputs from memory a second time.
          expect(settled.status).toBe('rejected');
          const reason = (settled as PromiseRejectedResult).reason as Error;
          expect(reason).toBeInstanceOf(FencedError);
          expect(reason.message).toMatch(
            /commit 1 of shard .* took effect, but the lease with fence 1 was taken over/,
          );
        } finally {
          await f.close();
        }
      });
    }

    // The heartbeat tests run concurrently with each other: they mostly wait, in real time, and
    // each has its own tables.
    it.concurrent('heartbeat: a holder whose apply outlasts the lease keeps it; a takeover attempt meanwhile fails', async () => {
      const f = await fixture(mode);
      try {
        // A's apply stalls halfway for 2.5 TTLs (an apply of very many keys), in real time.
        const { backend: a, reached } = slowApplier(f);
        const leaseA = await a.acquireLease(SHARD, 'A', Date.now(), HEARTBEAT_TTL);
        const commitA = a.commit(leaseA, deltaCommit());
        commitA.catch(() => {});
        await reached;
        // Past the expiry A's lease had at acquisition, another invocation tries to take the shard.
        await sleep(leaseA.expiresAt + HEARTBEAT_TTL / 4 - Date.now());
        await expect(f.open().acquireLease(SHARD, 'B', Date.now(), HEARTBEAT_TTL)).rejects.toBeInstanceOf(
          LeaseUnavailableError,
        );
        // A's commit completes under its own lease.
        await commitA;
        const b = f.open();
        expect(await stateOf(b)).toEqual(committedState());
        expect(await leaseItem(f)).toMatchObject({
          owner: 'A',
          fence: String(leaseA.fence),
          commitNumber: '1',
        });
        expect((await leaseItem(f)).pendingDelta).toBeUndefined();
        expect(Number((await leaseItem(f)).leaseExpiresAt)).toBeGreaterThan(leaseA.expiresAt + HEARTBEAT_TTL);
      } finally {
        await f.close();
      }
    });

    it.concurrent('heartbeat: a holder whose redo outlasts the lease keeps it; a takeover attempt meanwhile fails', async () => {
      const f = await fixture(mode);
      try {
        // A passes its commit point and dies: the delta is pending.
        const a = f.open({
          onStep: (s: DynamoCommitStep) => {
            if (s === 'after-commit-point') throw new Crash('after the commit point');
          },
        });
        await expect(
          a.commit(await a.acquireLease(SHARD, 'A', 0, HEARTBEAT_TTL), deltaCommit()),
        ).rejects.toBeInstanceOf(Crash);
        // B takes the lease and redoes the delta, stalling halfway for 2.5 TTLs.
        const { backend: b, reached } = slowApplier(f);
        const acquiredAt = Date.now();
        const acquiring = b.acquireLease(SHARD, 'B', acquiredAt, HEARTBEAT_TTL);
        acquiring.catch(() => {});
        await reached;
        await sleep(acquiredAt + HEARTBEAT_TTL + HEARTBEAT_TTL / 4 - Date.now());
        await expect(f.open().acquireLease(SHARD, 'C', Date.now(), HEARTBEAT_TTL)).rejects.toBeInstanceOf(
          LeaseUnavailableError,
        );
        const leaseB = await acquiring;
        expect(await stateOf(b)).toEqual(committedState());
        expect(await leaseItem(f)).toMatchObject({ owner: 'B', fence: String(leaseB.fence) });
        expect((await leaseItem(f)).pendingDelta).toBeUndefined();
      } finally {
        await f.close();
      }
    });

    it.concurrent('heartbeat: a holder whose lease was taken over stops its apply with FencedError and writes nothing more', async () => {
      const f = await fixture(mode);
      try {
        // Right after A's commit point, another holder takes the lease by force (a new fence, as
        // an acquisition would set), and A stalls until its heartbeat has tried to renew.
        const a = f.open({
          onStep: async (s: DynamoCommitStep) => {
            if (s !== 'after-commit-point') return;
            await clients.dynamodb.send(
              new UpdateItemCommand({
                TableName: f.controlTable,
                Key: { pk: { S: `${f.job}#0` }, sk: { S: `shard#${SHARD}` } },
                UpdateExpression: 'SET fence = fence + :one, leaseExpiresAt = :zero',
                ExpressionAttributeValues: { ':one': { N: '1' }, ':zero': { N: '0' } },
              }),
            );
            await sleep(HEARTBEAT_TTL / 3 + HEARTBEAT_TTL / 2);
          },
        });
        const leaseA = await a.acquireLease(SHARD, 'A', Date.now(), HEARTBEAT_TTL);
        const error = await a.commit(leaseA, deltaCommit()).then(
          () => undefined,
          (e: unknown) => e,
        );
        expect(error).toBeInstanceOf(FencedError);
        // A wrote no state item and no outbox item after the commit point; the delta is still
        // pending, for the new holder to redo.
        expect(a.metrics.itemsWritten).toBe(0);
        expect((error as Error).message).toMatch(
          /^commit 1 of shard .* stopped: the lease with fence 1 was taken over/,
        );
        expect(await stateOf(f.open())).toEqual({});
        expect(await f.open().unpublishedOutputs(SHARD)).toEqual([]);
        expect((await leaseItem(f)).pendingDelta).toMatch(/deltas\/.*-1\.json$/);
        // The next holder redoes it: the commit is complete.
        const c = f.open();
        await c.acquireLease(SHARD, 'C', Date.now(), HEARTBEAT_TTL);
        expect(await stateOf(c)).toEqual(committedState());
        expect((await c.unpublishedOutputs(SHARD)).map((o) => o.id)).toEqual(outputs(1, 3).map((o) => o.id));
      } finally {
        await f.close();
      }
    });
  });
}
