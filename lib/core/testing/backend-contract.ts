/**
 * The backend contract suite: every StateStore + CheckpointStore adapter (memory, SQLite,
 * DynamoDB+S3) runs it from its own test file:
 *
 *   describeBackendContract('sqlite', async () => { ...; return { store, reopen, close }; });
 *
 * It checks bulk reads, the all-or-nothing commit conditional on the lease fence, leases,
 * the outbox, checkpoints, isolation between shards and persistence across a restart
 * (`reopen()`), and runs a windowed pipeline through ShardTask against the backend.
 *
 * Conventions the suite pins down: a lease is live while `now < expiresAt` (at `expiresAt` it
 * may be taken); a shard that was leased but never committed has no checkpoint; rejected
 * commits (stale fence, commitNumber not following the stored one) throw FencedError.
 */
import { afterEach, beforeEach, describe, expect, it } from 'vitest';
import { count } from '../aggregates.ts';
import { initialCheckpoint, type ShardCheckpoint } from '../checkpoint.ts';
import { compile } from '../compile.ts';
import { type Pipeline, passthroughDeserializer, pipeline } from '../dsl.ts';
import { FencedError, LeaseUnavailableError } from '../errors.ts';
import { MemoryBackend } from '../memory-backend.ts';
import type {
  CheckpointStore,
  Commit,
  Lease,
  Output,
  SourceRecord,
  StateAddress,
  StateMutation,
  StateStore,
} from '../ports.ts';
import { ShardTask } from '../shard-task.ts';
import { MAX_WATERMARK } from '../time.ts';
import { boundedOutOfOrderness } from '../watermarks.ts';
import { sliding, tumbling } from '../windows.ts';

export interface BackendUnderTest {
  readonly store: StateStore & CheckpointStore;
  /** The same persisted data through fresh objects (a process restart). */
  reopen(): Promise<StateStore & CheckpointStore>;
  close(): Promise<void>;
}

export type BackendFactory = () => Promise<BackendUnderTest>;

type Backend = StateStore & CheckpointStore;

const SHARD = 'shardId-000000000000';
const OTHER_SHARD = 'shardId-000000000001';
const T0 = 1_700_000_000_000;
const TTL = 60_000;

/** A checkpoint following `prev` (or the first one), with the given changes. */
function nextCheckpoint(
  shardId: string,
  prev: ShardCheckpoint | undefined,
  changes: Partial<ShardCheckpoint> = {},
): ShardCheckpoint {
  const base = prev ?? initialCheckpoint(shardId);
  return { ...base, shardId, commitNumber: base.commitNumber + 1, ...changes };
}

function outputs(shardId: string, commitNumber: number, values: readonly unknown[], sink = 'out'): Output[] {
  return values.map((value, i) => ({ id: `job/${shardId}/${commitNumber}/${i}`, sink, value }));
}

function puts(entries: Record<string, string>): StateMutation[] {
  return Object.entries(entries).map(([address, value]) => ({ address, value }));
}

function sortedById(list: readonly Output[]): Output[] {
  return [...list].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
}

/** A pseudo-random string of about `length` UTF-16 units, distinct per seed (deterministic). */
function bigText(length: number, seed: number): string {
  // Single UTF-16 units only, so cutting the string never splits a surrogate pair.
  const chars = [...'abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 {}[]":,/\\é€'];
  let x = (seed * 2_654_435_761) >>> 0 || 1;
  const block: string[] = [];
  for (let i = 0; i < 4_096; i++) {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    block.push(chars[(x >>> 0) % chars.length]!);
  }
  const unit = `<${seed}>${block.join('')}`;
  return unit.repeat(Math.ceil(length / unit.length)).slice(0, length);
}

/** Everything observable about one shard and a set of addresses, for "nothing changed" checks. */
async function snapshot(store: Backend, shardId: string, addresses: readonly StateAddress[]) {
  const state = await store.getMany(addresses);
  return {
    state: [...state].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0)),
    checkpoint: await store.readCheckpoint(shardId),
    outbox: await store.unpublishedOutputs(shardId),
  };
}

async function expectRejection(promise: Promise<unknown>, type?: abstract new (...args: never[]) => Error) {
  let error: unknown;
  try {
    await promise;
  } catch (e) {
    error = e;
  }
  expect(error, 'the operation should have been rejected').toBeInstanceOf(type ?? Error);
  return error as Error;
}

// --- the pipeline of the end-to-end cases -------------------------------------------------

interface Click {
  readonly user: string;
  readonly ts: number;
  readonly n: number;
}

function clickPipeline(): Pipeline {
  const p = pipeline('contract-clicks');
  const stream = p
    .source<Click>({ deserializer: passthroughDeserializer<Click>() })
    .withTimestamps((c) => c.ts, boundedOutOfOrderness(5));
  stream
    .keyBy((c) => c.user)
    .window(tumbling({ size: 20 }))
    .allowedLateness(10)
    .uid('clicks-tumbling')
    .aggregate(count<Click>(), ({ key, window, result }) => ({ key, ...window, clicks: result }))
    .sink('counts');
  stream
    .keyBy((c) => c.user)
    .window(sliding({ size: 30, slide: 10 }))
    .uid('clicks-sliding')
    .reduce((a, b) => ({ user: a.user, ts: Math.max(a.ts, b.ts), n: a.n + b.n }))
    .sink('sums');
  return p;
}

/** Deterministic input: per shard, out-of-order clicks with some late ones. */
function clickBatches(shardId: string, users: readonly string[]): SourceRecord[][] {
  const batches: SourceRecord[][] = [];
  let seq = 0;
  let x = 2_463_534_242 ^ shardId.charCodeAt(shardId.length - 1);
  const rand = (n: number): number => {
    x ^= x << 13;
    x ^= x >>> 17;
    x ^= x << 5;
    return (x >>> 0) % n;
  };
  let base = 0;
  for (let b = 0; b < 6; b++) {
    const batch: SourceRecord[] = [];
    for (let i = 0; i < 12; i++) {
      base += rand(4);
      const ts = base - rand(35); // out of order; some beyond bound + lateness
      const user = users[rand(users.length)]!;
      seq++;
      batch.push({
        data: { user, ts, n: 1 + rand(9) },
        partitionKey: user,
        sequenceNumber: String(seq).padStart(20, '0'),
        arrivalTime: T0 + seq,
      });
    }
    batches.push(batch);
  }
  return batches;
}

/** Publishes (collects) and marks the shard's outbox, as a worker does after its commit. */
async function publish(store: Backend, shardId: string, into: Output[]): Promise<void> {
  const pending = await store.unpublishedOutputs(shardId);
  into.push(...pending);
  await store.markPublished(
    shardId,
    pending.map((o) => o.id),
  );
}

/** The reference run: one long-lived ShardTask per shard on a plain MemoryBackend. */
async function referenceRun(
  p: Pipeline,
  input: ReadonlyMap<string, SourceRecord[][]>,
): Promise<Map<string, Output[]>> {
  const backend = new MemoryBackend();
  const result = new Map<string, Output[]>();
  for (const [shardId, batches] of input) {
    const lease = await backend.acquireLease(shardId, 'reference', T0, 2 ** 40);
    const task = new ShardTask(compile(p), shardId);
    const published: Output[] = [];
    for (const batch of batches) {
      await backend.commit(lease, await task.processBatch(batch, backend, T0 + 1_000));
      await publish(backend, shardId, published);
    }
    await backend.commit(lease, await task.processWatermark(MAX_WATERMARK, backend, T0 + 1_000));
    await publish(backend, shardId, published);
    result.set(shardId, published);
  }
  return result;
}

/**
 * Registers the contract tests for one backend. `factory` is called once per test and must
 * return an empty backend; `close()` is called after the test.
 */
export function describeBackendContract(name: string, factory: BackendFactory): void {
  describe(`backend contract: ${name}`, () => {
    let backend: BackendUnderTest;
    let store: Backend;

    beforeEach(async () => {
      backend = await factory();
      store = backend.store;
    });

    afterEach(async () => {
      await backend.close();
    });

    const reopen = async (): Promise<Backend> => {
      store = await backend.reopen();
      return store;
    };

    /** Commits one batch under `lease`, following the stored checkpoint. */
    const commitAs = async (
      lease: Lease,
      parts: { mutations?: StateMutation[]; values?: unknown[]; checkpoint?: Partial<ShardCheckpoint> } = {},
    ): Promise<Commit> => {
      const prev = await store.readCheckpoint(lease.shardId);
      const checkpoint = nextCheckpoint(lease.shardId, prev, parts.checkpoint);
      const commit: Commit = {
        checkpoint,
        mutations: parts.mutations ?? [],
        outputs: outputs(lease.shardId, checkpoint.commitNumber, parts.values ?? []),
      };
      await store.commit(lease, commit);
      return commit;
    };

    describe('state reads', () => {
      it('getMany of no addresses and of missing addresses returns an empty map', async () => {
        expect((await store.getMany([])).size).toBe(0);
        const missing = await store.getMany(['op/"nope"', 'op/1', 'other/"x"']);
        expect(missing).toBeInstanceOf(Map);
        expect(missing.size).toBe(0);
      });

      it('getMany returns present entries and omits missing ones', async () => {
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        await commitAs(lease, { mutations: puts({ 'op/"a"': '{"s":1}', 'op/"b"': '{"s":2}' }) });
        const got = await store.getMany(['op/"a"', 'op/"missing"', 'op/"b"']);
        expect(got).toEqual(
          new Map([
            ['op/"a"', '{"s":1}'],
            ['op/"b"', '{"s":2}'],
          ]),
        );
      });

      it('getMany tolerates the same address twice', async () => {
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        await commitAs(lease, { mutations: puts({ 'op/"a"': 'A' }) });
        const got = await store.getMany(['op/"a"', 'op/"a"', 'op/"z"', 'op/"z"']);
        expect(got).toEqual(new Map([['op/"a"', 'A']]));
      });

      it('writes 1,000 entries in one commit and reads them (mixed with 1,000 missing) in one getMany', async () => {
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        const mutations: StateMutation[] = [];
        for (let i = 0; i < 1_000; i++) {
          mutations.push({
            address: `window-0/${JSON.stringify(`key-${i}`)}`,
            value: `{"k":"key-${i}","i":${i}}`,
          });
        }
        await commitAs(lease, { mutations });
        const wanted: string[] = [];
        for (let i = 0; i < 1_000; i++) {
          wanted.push(`window-0/${JSON.stringify(`key-${i}`)}`);
          wanted.push(`window-0/${JSON.stringify(`absent-${i}`)}`);
        }
        const got = await store.getMany(wanted);
        expect(got.size).toBe(1_000);
        for (const m of mutations) expect(got.get(m.address)).toBe(m.value);
        for (let i = 0; i < 1_000; i++)
          expect(got.has(`window-0/${JSON.stringify(`absent-${i}`)}`)).toBe(false);
        const reopened = await reopen();
        expect(await reopened.getMany(wanted)).toEqual(got);
      });

      it('stores addresses and values with unicode, slashes, quotes, backslashes and numbers', async () => {
        const entries: Record<string, string> = {
          [`op/${JSON.stringify('a/b/c')}`]: 'slashes',
          [`op/${JSON.stringify('say "hi" it\'s')}`]: 'quotes',
          [`op/${JSON.stringify('back\\slash')}`]: 'back\\slash\nnew line\ttab',
          [`op/${JSON.stringify('héllo wörld ✓ 日本語 😀')}`]: '{"v":"héllo 😀 \\u0000"}',
          [`op/${JSON.stringify(' spaces  and %20 & ? # = + ')}`]: 'symbols',
          [`op/${JSON.stringify('')}`]: 'empty key',
          'op/42': 'number key',
          'op/-3.5': 'negative number key',
          [`name with spaces/${JSON.stringify('k')}`]: 'uid with spaces',
        };
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        await commitAs(lease, { mutations: puts(entries) });
        const addresses = Object.keys(entries);
        const expected = new Map(Object.entries(entries));
        expect(await store.getMany(addresses)).toEqual(expected);
        // Addresses differing only in a prefix or a suffix are distinct entries.
        expect((await store.getMany(['op/"a/b"', 'op/"a/b/c/"', 'op', 'op/4', 'op/"héllo"'])).size).toBe(0);
        expect(await (await reopen()).getMany(addresses)).toEqual(expected);
      });

      it('stores large values (~300 KB) and commits holding several MB', async () => {
        const big = bigText(300_000, 1);
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        await commitAs(lease, { mutations: puts({ 'op/"big"': big }) });
        expect((await store.getMany(['op/"big"'])).get('op/"big"')).toBe(big);

        // 16 x 300 KB: larger than one DynamoDB transaction (4 MB) can hold.
        const many: Record<string, string> = {};
        for (let i = 0; i < 16; i++) many[`op/"big-${i}"`] = bigText(300_000, i + 2);
        const bigOutputs = [bigText(300_000, 99), { nested: bigText(200_000, 98) }];
        await commitAs(lease, { mutations: puts(many), values: bigOutputs });
        const reopened = await reopen();
        const got = await reopened.getMany(Object.keys(many));
        expect(got.size).toBe(16);
        for (const [address, value] of Object.entries(many)) expect(got.get(address)).toBe(value);
        expect((await reopened.unpublishedOutputs(SHARD)).map((o) => o.value)).toEqual(bigOutputs);
        expect((await reopened.readCheckpoint(SHARD))?.commitNumber).toBe(2);
      });

      it('a null mutation deletes an entry; deleting a missing entry is fine', async () => {
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        await commitAs(lease, { mutations: puts({ 'op/"a"': 'A', 'op/"b"': 'B' }) });
        await commitAs(lease, {
          mutations: [
            { address: 'op/"a"', value: null },
            { address: 'op/"never-written"', value: null },
            { address: 'op/"b"', value: 'B2' },
          ],
        });
        expect(await store.getMany(['op/"a"', 'op/"b"', 'op/"never-written"'])).toEqual(
          new Map([['op/"b"', 'B2']]),
        );
        const reopened = await reopen();
        expect(await reopened.getMany(['op/"a"', 'op/"b"'])).toEqual(new Map([['op/"b"', 'B2']]));
        // A deleted entry can be written again.
        const lease2 = await reopened.acquireLease(SHARD, 'w1', T0 + 1, TTL);
        await commitAs(lease2, { mutations: puts({ 'op/"a"': 'A3' }) });
        expect(await store.getMany(['op/"a"'])).toEqual(new Map([['op/"a"', 'A3']]));
      });
    });

    describe('commit', () => {
      it('applies mutations, outputs and the checkpoint together, and they survive reopen()', async () => {
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        const checkpoint: ShardCheckpoint = {
          shardId: SHARD,
          position: '49590338271490256608559692538361571095921575989136588898',
          commitNumber: 1,
          watermark: 1_699_999_999_000,
          maxTimestamp: 1_700_000_000_000,
          lastRecordAt: T0,
          timers: [
            {
              operator: 'window-0',
              domain: 'event',
              time: 1_700_000_059_999,
              key: 'user "1"/é',
              namespace: 0,
            },
            { operator: 'window-0', domain: 'event', time: 5, key: 7, namespace: -60_000 },
            { operator: 'process-0', domain: 'processing', time: T0 + 10, key: 'k', namespace: 'ns/x' },
          ],
          finished: false,
        };
        const values = [
          { key: 'a', window: { start: 0, end: 60_000 }, result: 3 },
          'plain string 😀',
          42,
          null,
          [1, 'two', { three: [3] }],
        ];
        const commit: Commit = {
          checkpoint,
          mutations: puts({ 'window-0/"a"': '{"s":{"w":[[0,3]]}}', 'process-0/7': '{"s":{}}' }),
          outputs: [
            ...outputs(SHARD, 1, values),
            { id: `job/${SHARD}/1/5`, sink: 'floe.dead-letter', value: { reason: 'deserialize' } },
          ],
        };
        expect(await store.readCheckpoint(SHARD)).toBeUndefined();
        await store.commit(lease, commit);

        const check = async (s: Backend): Promise<void> => {
          expect(await s.readCheckpoint(SHARD)).toEqual(checkpoint);
          expect(await s.getMany(commit.mutations.map((m) => m.address))).toEqual(
            new Map(commit.mutations.map((m) => [m.address, m.value as string])),
          );
          expect(await s.unpublishedOutputs(SHARD)).toEqual(commit.outputs);
        };
        await check(store);
        await check(await reopen());
      });

      it('round-trips watermark and timestamp infinities and a finished shard', async () => {
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        await store.commit(lease, {
          checkpoint: nextCheckpoint(SHARD, undefined),
          mutations: [],
          outputs: [],
        });
        expect(await store.readCheckpoint(SHARD)).toEqual(nextCheckpoint(SHARD, undefined));
        const end = nextCheckpoint(SHARD, await store.readCheckpoint(SHARD), {
          position: '12',
          watermark: MAX_WATERMARK,
          maxTimestamp: 99,
          finished: true,
        });
        await store.commit(lease, { checkpoint: end, mutations: [], outputs: [] });
        expect(await (await reopen()).readCheckpoint(SHARD)).toEqual(end);
      });

      it('a commit with no mutations and no outputs only moves the checkpoint', async () => {
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        await commitAs(lease, { mutations: puts({ 'op/"a"': 'A' }), values: ['x'] });
        await commitAs(lease, { checkpoint: { watermark: 100 } });
        expect((await store.readCheckpoint(SHARD))?.commitNumber).toBe(2);
        expect((await store.readCheckpoint(SHARD))?.watermark).toBe(100);
        expect(await store.getMany(['op/"a"'])).toEqual(new Map([['op/"a"', 'A']]));
        expect((await store.unpublishedOutputs(SHARD)).map((o) => o.value)).toEqual(['x']);
      });

      it('rejects a commit whose commitNumber does not follow the stored one, changing nothing', async () => {
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        await commitAs(lease, { mutations: puts({ 'op/"a"': 'A1' }), values: ['first'] });
        await commitAs(lease, { mutations: puts({ 'op/"a"': 'A2' }), values: ['second'] });
        const addresses = ['op/"a"', 'op/"b"'];
        const before = await snapshot(store, SHARD, addresses);
        const stored = before.checkpoint!;
        expect(stored.commitNumber).toBe(2);
        for (const commitNumber of [stored.commitNumber, stored.commitNumber - 1, stored.commitNumber + 2]) {
          const bad: Commit = {
            checkpoint: { ...stored, commitNumber, watermark: 12345 },
            mutations: puts({ 'op/"a"': 'BAD', 'op/"b"': 'BAD' }),
            outputs: outputs(SHARD, commitNumber, ['bad']),
          };
          await expectRejection(store.commit(lease, bad), FencedError);
          expect(await snapshot(store, SHARD, addresses)).toEqual(before);
        }
        expect(await snapshot(await reopen(), SHARD, addresses)).toEqual(before);
        // The right next commit still goes through.
        await commitAs(lease, { mutations: puts({ 'op/"b"': 'B3' }) });
        expect((await store.readCheckpoint(SHARD))?.commitNumber).toBe(3);
      });

      it('rejects a commit of another shard than the lease, changing nothing', async () => {
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        await commitAs(lease, { mutations: puts({ 'op/"a"': 'A' }), values: ['ok'] });
        const before = await snapshot(store, SHARD, ['op/"a"', 'op/"x"']);
        await expectRejection(
          store.commit(lease, {
            checkpoint: nextCheckpoint(OTHER_SHARD, undefined),
            mutations: puts({ 'op/"x"': 'X' }),
            outputs: outputs(OTHER_SHARD, 1, ['x']),
          }),
        );
        expect(await snapshot(store, SHARD, ['op/"a"', 'op/"x"'])).toEqual(before);
        expect(await store.readCheckpoint(OTHER_SHARD)).toBeUndefined();
        expect(await store.unpublishedOutputs(OTHER_SHARD)).toEqual([]);
      });
    });

    describe('leases', () => {
      it('the first acquisition of a free shard gets fence 1', async () => {
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        expect(lease).toEqual({ shardId: SHARD, owner: 'w1', fence: 1, expiresAt: T0 + TTL });
      });

      it('another owner cannot take a live lease (LeaseUnavailableError, retryable)', async () => {
        await store.acquireLease(SHARD, 'w1', T0, TTL);
        for (const now of [T0, T0 + 1, T0 + TTL - 1]) {
          const error = await expectRejection(
            store.acquireLease(SHARD, 'w2', now, TTL),
            LeaseUnavailableError,
          );
          expect((error as LeaseUnavailableError).retryable).toBe(true);
        }
        // Still held after a restart.
        await expectRejection(
          (await reopen()).acquireLease(SHARD, 'w2', T0 + 10, TTL),
          LeaseUnavailableError,
        );
      });

      it('re-acquiring after expiry increments the fence', async () => {
        const first = await store.acquireLease(SHARD, 'w1', T0, TTL);
        const second = await store.acquireLease(SHARD, 'w2', T0 + TTL, TTL);
        expect(second).toEqual({
          shardId: SHARD,
          owner: 'w2',
          fence: first.fence + 1,
          expiresAt: T0 + 2 * TTL,
        });
        const third = await store.acquireLease(SHARD, 'w1', T0 + 5 * TTL, TTL);
        expect(third.fence).toBe(first.fence + 2);
        // The fence keeps counting across restarts.
        const fourth = await (await reopen()).acquireLease(SHARD, 'w3', T0 + 10 * TTL, TTL);
        expect(fourth.fence).toBe(first.fence + 3);
      });

      it('re-acquiring after release increments the fence', async () => {
        const first = await store.acquireLease(SHARD, 'w1', T0, TTL);
        await store.releaseLease(first);
        const second = await store.acquireLease(SHARD, 'w2', T0 + 1, TTL);
        expect(second.fence).toBe(first.fence + 1);
        expect(second.owner).toBe('w2');
        await store.releaseLease(second);
        const third = await store.acquireLease(SHARD, 'w1', T0 + 2, TTL);
        expect(third.fence).toBe(first.fence + 2);
      });

      it('releasing a stale lease does not free the current holder', async () => {
        const stale = await store.acquireLease(SHARD, 'w1', T0, TTL);
        const current = await store.acquireLease(SHARD, 'w2', T0 + TTL, TTL);
        await store.releaseLease(stale);
        await expectRejection(store.acquireLease(SHARD, 'w1', T0 + TTL + 1, TTL), LeaseUnavailableError);
        await commitAs(current, { values: ['still mine'] });
        expect((await store.readCheckpoint(SHARD))?.commitNumber).toBe(1);
      });

      it('renew extends the lease', async () => {
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        const renewed = await store.renewLease(lease, T0 + TTL - 1, TTL);
        expect(renewed).toEqual({
          shardId: SHARD,
          owner: 'w1',
          fence: lease.fence,
          expiresAt: T0 + 2 * TTL - 1,
        });
        // Past the first expiry, the lease is still held...
        await expectRejection(store.acquireLease(SHARD, 'w2', T0 + TTL + 10, TTL), LeaseUnavailableError);
        // ...the holder can commit with either object (same fence)...
        await commitAs(renewed, { values: ['after renew'] });
        // ...and after the new expiry another owner takes it.
        const taken = await store.acquireLease(SHARD, 'w2', T0 + 2 * TTL - 1, TTL);
        expect(taken.fence).toBe(lease.fence + 1);
      });

      it('a renew with a stale fence throws FencedError and does not disturb the new holder', async () => {
        const stale = await store.acquireLease(SHARD, 'w1', T0, TTL);
        const current = await store.acquireLease(SHARD, 'w2', T0 + TTL, TTL);
        await expectRejection(store.renewLease(stale, T0 + TTL + 1, 10 * TTL), FencedError);
        // The zombie's renewal did not extend anything or change the owner.
        const next = await store.acquireLease(SHARD, 'w3', current.expiresAt, TTL);
        expect(next.fence).toBe(current.fence + 1);
      });

      it('a commit with a stale fence throws FencedError and changes nothing', async () => {
        const zombie = await store.acquireLease(SHARD, 'w1', T0, TTL);
        await commitAs(zombie, { mutations: puts({ 'op/"a"': 'A1' }), values: ['one'] });
        const current = await store.acquireLease(SHARD, 'w2', T0 + TTL, TTL);
        const addresses = ['op/"a"', 'op/"new"'];
        const before = await snapshot(store, SHARD, addresses);
        const prev = before.checkpoint;
        const zombieCommit: Commit = {
          checkpoint: nextCheckpoint(SHARD, prev, { watermark: 777 }),
          mutations: [
            { address: 'op/"a"', value: null },
            { address: 'op/"new"', value: 'ZOMBIE' },
          ],
          outputs: outputs(SHARD, 2, ['zombie']),
        };
        await expectRejection(store.commit(zombie, zombieCommit), FencedError);
        expect(await snapshot(store, SHARD, addresses)).toEqual(before);
        expect(await snapshot(await reopen(), SHARD, addresses)).toEqual(before);
        // The current holder commits the same commit number.
        await commitAs(current, { mutations: puts({ 'op/"new"': 'NEW' }), values: ['two'] });
        expect(await store.getMany(addresses)).toEqual(
          new Map([
            ['op/"a"', 'A1'],
            ['op/"new"', 'NEW'],
          ]),
        );
        expect((await store.unpublishedOutputs(SHARD)).map((o) => o.value)).toEqual(['one', 'two']);
        // A zombie from before a restart is still fenced.
        await expectRejection(
          store.commit(zombie, {
            ...zombieCommit,
            checkpoint: nextCheckpoint(SHARD, await store.readCheckpoint(SHARD)),
          }),
          FencedError,
        );
      });

      it('a lease acquired before a restart still commits after it', async () => {
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        await commitAs(lease, { values: ['before'] });
        await reopen();
        await commitAs(lease, { values: ['after'] });
        expect((await store.unpublishedOutputs(SHARD)).map((o) => o.value)).toEqual(['before', 'after']);
      });
    });

    describe('outbox', () => {
      it('returns unpublished outputs in commit order; markPublished removes them; survives reopen', async () => {
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        const c1 = await commitAs(lease, { values: ['a', 'b', 'c'] });
        const c2 = await commitAs(lease, { values: [] });
        const c3 = await commitAs(lease, { values: Array.from({ length: 30 }, (_, i) => ({ i })) });
        const all = [...c1.outputs, ...c2.outputs, ...c3.outputs];
        expect(await store.unpublishedOutputs(SHARD)).toEqual(all);
        expect(await (await reopen()).unpublishedOutputs(SHARD)).toEqual(all);

        await store.markPublished(SHARD, [c1.outputs[1]!.id, c3.outputs[0]!.id, 'job/unknown/9/9']);
        const rest = all.filter((o) => o.id !== c1.outputs[1]!.id && o.id !== c3.outputs[0]!.id);
        expect(await store.unpublishedOutputs(SHARD)).toEqual(rest);
        expect(await (await reopen()).unpublishedOutputs(SHARD)).toEqual(rest);

        // Marking twice is harmless; marking everything empties the outbox.
        await store.markPublished(
          SHARD,
          all.map((o) => o.id),
        );
        await store.markPublished(
          SHARD,
          all.map((o) => o.id),
        );
        expect(await store.unpublishedOutputs(SHARD)).toEqual([]);
        const c4 = await commitAs(lease, { values: ['later'] });
        expect(await (await reopen()).unpublishedOutputs(SHARD)).toEqual(c4.outputs);
      });

      it('keeps more than 100 outputs of one commit in order', async () => {
        const lease = await store.acquireLease(SHARD, 'w1', T0, TTL);
        const c1 = await commitAs(lease, { values: Array.from({ length: 250 }, (_, i) => `v${i}`) });
        const c2 = await commitAs(lease, { values: Array.from({ length: 120 }, (_, i) => i) });
        expect(await (await reopen()).unpublishedOutputs(SHARD)).toEqual([...c1.outputs, ...c2.outputs]);
      });

      it('marking outputs of an empty or unknown shard is a no-op', async () => {
        await store.markPublished('shardId-unknown', ['x/y/1/0']);
        await store.markPublished(SHARD, []);
        expect(await store.unpublishedOutputs('shardId-unknown')).toEqual([]);
      });
    });

    describe('checkpoints', () => {
      it('readCheckpoint of an unknown shard is undefined; listCheckpoints lists every committed shard', async () => {
        expect(await store.readCheckpoint(SHARD)).toBeUndefined();
        expect(await store.listCheckpoints()).toEqual([]);
        const shards = ['shardId-000000000002', SHARD, OTHER_SHARD];
        for (const [i, shardId] of shards.entries()) {
          const lease = await store.acquireLease(shardId, 'w1', T0, TTL);
          for (let c = 0; c <= i; c++) await commitAs(lease, { checkpoint: { position: String(10 + c) } });
        }
        const byShard = (list: ShardCheckpoint[]): ShardCheckpoint[] =>
          [...list].sort((a, b) => (a.shardId < b.shardId ? -1 : 1));
        const expected = await Promise.all(shards.map((s) => store.readCheckpoint(s)));
        expect(expected.map((c) => c?.commitNumber)).toEqual([1, 2, 3]);
        expect(byShard(await store.listCheckpoints())).toEqual(byShard(expected as ShardCheckpoint[]));
        expect(byShard(await (await reopen()).listCheckpoints())).toEqual(
          byShard(expected as ShardCheckpoint[]),
        );
      });

      it('a leased shard without a commit has no checkpoint', async () => {
        await store.acquireLease(SHARD, 'w1', T0, TTL);
        expect(await store.readCheckpoint(SHARD)).toBeUndefined();
        expect(await store.listCheckpoints()).toEqual([]);
      });
    });

    describe('isolation between shards', () => {
      it('leases, fences, checkpoints and outboxes are per shard; state is shared by address', async () => {
        const a = await store.acquireLease(SHARD, 'w1', T0, TTL);
        const b = await store.acquireLease(OTHER_SHARD, 'w2', T0, TTL);
        expect(a.fence).toBe(1);
        expect(b.fence).toBe(1);
        await commitAs(a, { mutations: puts({ 'op/"from-a"': 'A' }), values: ['a1'] });
        await commitAs(a, { values: ['a2'] });
        await commitAs(b, { mutations: puts({ 'op/"from-b"': 'B' }), values: ['b1'] });
        // A lease of one shard cannot commit another shard's checkpoint...
        await expectRejection(
          store.commit(a, {
            checkpoint: nextCheckpoint(OTHER_SHARD, await store.readCheckpoint(OTHER_SHARD)),
            mutations: [],
            outputs: [],
          }),
        );
        // ...and taking over one shard does not fence the other.
        const a2 = await store.acquireLease(SHARD, 'w3', T0 + TTL, TTL);
        expect(a2.fence).toBe(2);
        await commitAs(b, { values: ['b2'] });
        await expectRejection(
          store.acquireLease(OTHER_SHARD, 'w3', T0 + TTL - 1, TTL),
          LeaseUnavailableError,
        );

        expect((await store.readCheckpoint(SHARD))?.commitNumber).toBe(2);
        expect((await store.readCheckpoint(OTHER_SHARD))?.commitNumber).toBe(2);
        expect((await store.unpublishedOutputs(SHARD)).map((o) => o.value)).toEqual(['a1', 'a2']);
        expect((await store.unpublishedOutputs(OTHER_SHARD)).map((o) => o.value)).toEqual(['b1', 'b2']);
        await store.markPublished(
          SHARD,
          (await store.unpublishedOutputs(SHARD)).map((o) => o.id),
        );
        // Marking ids of shard A under shard B does nothing to either.
        await store.markPublished(OTHER_SHARD, [`job/${SHARD}/1/0`]);
        expect(await store.unpublishedOutputs(SHARD)).toEqual([]);
        expect((await store.unpublishedOutputs(OTHER_SHARD)).map((o) => o.value)).toEqual(['b1', 'b2']);
        expect(await store.getMany(['op/"from-a"', 'op/"from-b"'])).toEqual(
          new Map([
            ['op/"from-a"', 'A'],
            ['op/"from-b"', 'B'],
          ]),
        );
        const reopened = await reopen();
        expect((await reopened.unpublishedOutputs(OTHER_SHARD)).map((o) => o.value)).toEqual(['b1', 'b2']);
        expect(await reopened.unpublishedOutputs(SHARD)).toEqual([]);
      });
    });

    describe('end to end through ShardTask', () => {
      const users = [
        ['alice', 'bob', 'carol/"c"'],
        ['dave', 'eve 😀'],
      ] as const;
      const shards = [SHARD, OTHER_SHARD];
      const input = new Map(shards.map((s, i) => [s, clickBatches(s, users[i]!)]));

      it('gives the same published outputs as a plain MemoryBackend, restarting after every batch', async () => {
        const p = clickPipeline();
        const expected = await referenceRun(p, input);
        expect([...expected.values()].flat().length).toBeGreaterThan(20);
        expect([...expected.values()].flat().some((o) => o.sink === 'floe.late')).toBe(true);

        const published = new Map<string, Output[]>(shards.map((s) => [s, []]));
        let now = T0 + 1_000;
        const rounds = Math.max(...[...input.values()].map((b) => b.length)) + 1;
        for (let round = 0; round < rounds; round++) {
          // Interleave the shards, one invocation per shard and round, each in a fresh process.
          for (const shardId of shards) {
            const batch = input.get(shardId)![round];
            const lease = await store.acquireLease(shardId, `worker-${round}`, now, TTL);
            const checkpoint = await store.readCheckpoint(shardId);
            const task = new ShardTask(compile(p), checkpoint ?? shardId);
            const result =
              batch === undefined
                ? await task.processWatermark(MAX_WATERMARK, store, now)
                : await task.processBatch(batch, store, now);
            await store.commit(lease, result);
            await publish(store, shardId, published.get(shardId)!);
            await store.releaseLease(lease);
            now += 1;
            await reopen();
          }
        }
        for (const shardId of shards) {
          expect(published.get(shardId)).toEqual(expected.get(shardId));
        }
      });

      it('recovers from a zombie and from a crash between commit and publish with the same outputs', async () => {
        const p = clickPipeline();
        const expected = await referenceRun(p, input);
        const shardId = SHARD;
        const batches = input.get(shardId)!;
        const published: Output[] = [];
        let now = T0 + 1_000;
        const invoke = async (owner: string) => {
          const lease = await store.acquireLease(shardId, owner, now, TTL);
          const task = new ShardTask(compile(p), (await store.readCheckpoint(shardId)) ?? shardId);
          return { lease, task };
        };
        for (const [i, batch] of [...batches, undefined].entries()) {
          const run = async (task: ShardTask) =>
            batch === undefined
              ? task.processWatermark(MAX_WATERMARK, store, now)
              : task.processBatch(batch, store, now);
          if (i === 2) {
            // A zombie computes the batch, loses its lease, and its commit is fenced.
            const zombie = await invoke('zombie');
            const zombieResult = await run(zombie.task);
            now += TTL;
            const fresh = await invoke('fresh');
            await expectRejection(store.commit(zombie.lease, zombieResult), FencedError);
            await store.commit(fresh.lease, await run(fresh.task));
            await store.releaseLease(fresh.lease);
          } else if (i === 4) {
            // Crash after the commit, before publishing: the next invocation republishes.
            const w = await invoke(`w${i}`);
            await store.commit(w.lease, await run(w.task));
            await reopen();
            now += TTL; // the crashed invocation's lease expires
          } else {
            const w = await invoke(`w${i}`);
            // Redelivered records (the previous batch again) are skipped by position.
            const previous = i > 0 ? batches[i - 1]! : [];
            const result =
              batch === undefined
                ? await run(w.task)
                : await w.task.processBatch([...previous, ...batch], store, now);
            await store.commit(w.lease, result);
            await publish(store, shardId, published);
            await store.releaseLease(w.lease);
          }
          now += 1;
        }
        await publish(store, shardId, published);
        expect(sortedById(published)).toEqual(sortedById(expected.get(shardId)!));
        expect(published).toEqual(expected.get(shardId));
      });
    });
  });
}
