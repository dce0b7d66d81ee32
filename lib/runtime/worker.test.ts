/**
 * The shard worker's pipelining: a read ahead while a batch is processed and committed, the
 * previous batch's publish overlapping the next batch's read and processing, and what happens
 * to the read ahead when the loop stops (failed commit, abort).
 */
import { describe, expect, it } from 'vitest';
import pageViews from '../../examples/page-views.ts';
import {
  boundedOutOfOrderness,
  type Commit,
  compile,
  DEAD_LETTER_SINK,
  type DeadLetter,
  FencedError,
  initialCheckpoint,
  type Lease,
  MemoryBackend,
  type Output,
  type PublishContext,
  pipeline,
  type ReadResult,
  RollbackNeedsReplayError,
  type ShardSource,
  valueState,
} from '../core/index.ts';
import { clickstream } from './clickstream.ts';
import type { JobRuntime } from './job.ts';
import { MemoryStream } from './testing/memory-stream.ts';
import { runShardWorker } from './worker.ts';

const T0 = Date.UTC(2026, 0, 2);
const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/** Everything that happened, in order. */
type Event =
  | { kind: 'read-start' | 'read-end'; n: number }
  | { kind: 'commit-start' | 'commit-end'; n: number }
  | { kind: 'publish-start' | 'publish-end'; n: number }
  | { kind: 'close'; readsInFlight: number };

interface Harness {
  readonly events: Event[];
  readonly published: Output[];
  /** The context of each publish, in order. */
  readonly contexts: (PublishContext | undefined)[];
  readonly backend: MemoryBackend;
  readonly shardId: string;
  job(options?: {
    failCommit?: number;
    failPublish?: number;
    readMs?: number;
    commitMs?: number;
    clock?: () => number;
    /** Runs after commit `n` (counted across the harness's jobs) took effect. */
    afterCommit?: (n: number) => Promise<void>;
  }): JobRuntime;
  readsInFlight(): number;
}

/** One shard of page views, through slow-ish reads, commits and publishes that record what they do. */
async function harness(events = 1500): Promise<Harness> {
  const stream = new MemoryStream(1, () => T0);
  const encoder = new TextEncoder();
  for (const view of clickstream({ events, pages: 40, users: 300, seed: 3 })) {
    stream.put(view.page, encoder.encode(JSON.stringify(view)), T0);
  }
  const shardId = (await stream.listShards())[0]!.shardId;
  const log: Event[] = [];
  const published: Output[] = [];
  const contexts: (PublishContext | undefined)[] = [];
  const backend = new MemoryBackend();
  let reads = 0;
  let inFlight = 0;
  let commitCount = 0;
  let publishCount = 0;
  return {
    events: log,
    published,
    contexts,
    backend,
    shardId,
    readsInFlight: () => inFlight,
    job({ failCommit, failPublish, readMs = 3, commitMs = 5, clock, afterCommit } = {}) {
      const source: ShardSource = {
        listShards: () => stream.listShards(),
        async openReader(id, position) {
          const inner = await stream.openReader(id, position);
          return {
            async read(limit: number): Promise<ReadResult> {
              const n = ++reads;
              inFlight++;
              log.push({ kind: 'read-start', n });
              try {
                await sleep(readMs);
                return await inner.read(limit);
              } finally {
                inFlight--;
                log.push({ kind: 'read-end', n });
              }
            },
            async close() {
              log.push({ kind: 'close', readsInFlight: inFlight });
              await inner.close?.();
            },
          };
        },
      };
      const store = Object.create(backend) as MemoryBackend;
      store.commit = async (lease: Lease, commit: Commit) => {
        const n = ++commitCount;
        log.push({ kind: 'commit-start', n });
        await sleep(commitMs);
        if (n === failCommit) throw new Error(`commit ${n} failed`);
        await backend.commit(lease, commit);
        log.push({ kind: 'commit-end', n });
        await afterCommit?.(n);
      };
      return {
        job: 'worker-test',
        plan: compile(pageViews),
        source,
        backend: store,
        sink: {
          async publish(outputs, context) {
            contexts.push(context);
            const n = ++publishCount;
            log.push({ kind: 'publish-start', n });
            await sleep(2);
            if (n === failPublish) throw new Error(`publish ${n} failed`);
            published.push(...outputs);
            log.push({ kind: 'publish-end', n });
          },
        },
        clock: clock ?? (() => T0 + 86_400_000),
      };
    },
  };
}

const options = { owner: 'w', batchSize: 100, untilIdle: true, idlePollMs: 1, leaseTtlMs: 60_000 };

/** Output ids and values, by id (an idempotent sink's view). */
function byId(outputs: readonly Output[]): Map<string, unknown> {
  return new Map(outputs.map((o) => [o.id, JSON.stringify(o.value)]));
}

/** Outputs of a run without any interference. */
async function reference(): Promise<Map<string, unknown>> {
  const h = await harness();
  await runShardWorker(h.job({ readMs: 0, commitMs: 0 }), h.shardId, options);
  return byId(h.published);
}

describe('runShardWorker pipelining', () => {
  it('reads the next batch while a batch commits, one read at a time, and commits only after the previous publish', async () => {
    const h = await harness();
    const result = await runShardWorker(h.job(), h.shardId, options);
    expect(result.records).toBe(1500);
    expect(result.caughtUp).toBe(true);

    let reading = 0;
    let maxReading = 0;
    let overlapped = 0;
    let publishing = 0;
    let publishingAtCommit = 0;
    for (const e of h.events) {
      if (e.kind === 'read-start') {
        reading++;
        maxReading = Math.max(maxReading, reading);
      } else if (e.kind === 'read-end') reading--;
      else if (e.kind === 'commit-start') {
        // The next batch is being read while this one commits.
        if (reading > 0) overlapped++;
        // A commit starts only once the previous commit's outputs are published.
        publishingAtCommit += publishing;
      } else if (e.kind === 'publish-start') publishing++;
      else if (e.kind === 'publish-end') publishing--;
    }
    expect(publishingAtCommit, 'publishes in flight when a commit started').toBe(0);
    expect(maxReading, 'at most one read in flight').toBe(1);
    expect(overlapped, 'reads overlapped commits').toBeGreaterThan(5);
    const close = h.events.find((e) => e.kind === 'close');
    expect(close).toEqual({ kind: 'close', readsInFlight: 0 });

    // Outputs are published in commit order and equal those of a run without delays.
    const commitsOf = h.published.map((o) => Number(o.id.split('/').at(-2)));
    expect(commitsOf).toEqual([...commitsOf].sort((a, b) => a - b));
    expect(byId(h.published)).toEqual(await reference());
    expect(await h.backend.unpublishedOutputs(h.shardId)).toEqual([]);
  });

  it('discards the read ahead when a commit fails, propagates the error, closes the reader after the read settled', async () => {
    const h = await harness();
    // Slow reads: the read ahead is still in flight when commit 3 fails.
    await expect(runShardWorker(h.job({ failCommit: 3, readMs: 30 }), h.shardId, options)).rejects.toThrow(
      'commit 3 failed',
    );
    const close = h.events.findLast((e) => e.kind === 'close');
    expect(close).toEqual({ kind: 'close', readsInFlight: 0 });
    expect(h.readsInFlight()).toBe(0);
    const checkpoint = await h.backend.readCheckpoint(h.shardId);
    expect(checkpoint?.commitNumber).toBe(2);

    // The next invocation resumes from commit 2 and loses nothing.
    const resumed = await runShardWorker(h.job(), h.shardId, { ...options, owner: 'w2' });
    expect(resumed.caughtUp).toBe(true);
    expect(byId(h.published)).toEqual(await reference());
    expect(await h.backend.unpublishedOutputs(h.shardId)).toEqual([]);
  });

  it('a failed publish stops the worker before another commit; the next invocation publishes the outbox', async () => {
    const h = await harness();
    await expect(runShardWorker(h.job({ failPublish: 2 }), h.shardId, options)).rejects.toThrow(
      'publish 2 failed',
    );
    const failedAt = h.events.findIndex((e) => e.kind === 'publish-start' && e.n === 2);
    const commitsAfter = h.events.slice(failedAt).filter((e) => e.kind === 'commit-start');
    expect(commitsAfter, 'no commit starts after the failed publish').toEqual([]);
    expect(h.events.findLast((e) => e.kind === 'close')).toEqual({ kind: 'close', readsInFlight: 0 });
    expect((await h.backend.unpublishedOutputs(h.shardId)).length).toBeGreaterThan(0);
    await runShardWorker(h.job(), h.shardId, { ...options, owner: 'w2' });
    expect(byId(h.published)).toEqual(await reference());
    expect(await h.backend.unpublishedOutputs(h.shardId)).toEqual([]);
  });

  it("gives the sink the shard's lineage depth, after a commit and from the outbox", async () => {
    const h = await harness(300);
    // A reshard child two levels down (the coordinator's initial checkpoint carries the depth).
    const initial = { ...initialCheckpoint(h.shardId), depth: 2 };
    await expect(runShardWorker(h.job({ failPublish: 2 }), h.shardId, options, initial)).rejects.toThrow(
      'publish 2 failed',
    );
    expect((await h.backend.unpublishedOutputs(h.shardId)).length).toBeGreaterThan(0);
    await runShardWorker(h.job(), h.shardId, { ...options, owner: 'w2' });
    expect(await h.backend.unpublishedOutputs(h.shardId)).toEqual([]);
    expect(h.contexts.length).toBeGreaterThan(2);
    expect(h.contexts).toEqual(h.contexts.map(() => ({ depth: 2 })));
  });

  it('publishes the outbox even when the checkpoint cannot be read, then fails with that error', async () => {
    const h = await harness(300);
    await expect(runShardWorker(h.job({ failPublish: 2 }), h.shardId, options)).rejects.toThrow(
      'publish 2 failed',
    );
    const pending = await h.backend.unpublishedOutputs(h.shardId);
    expect(pending.length).toBeGreaterThan(0);
    const job = h.job();
    const unreadable = Object.create(job.backend) as typeof job.backend;
    unreadable.readCheckpoint = async () => {
      throw new Error('checkpoint unreadable');
    };
    await expect(
      runShardWorker({ ...job, backend: unreadable }, h.shardId, { ...options, owner: 'w2' }),
    ).rejects.toThrow('checkpoint unreadable');
    expect(await h.backend.unpublishedOutputs(h.shardId)).toEqual([]);
    expect(h.published.map((o) => o.id)).toEqual(expect.arrayContaining(pending.map((o) => o.id)));
    expect(h.contexts.at(-1)).toBeUndefined();
  });

  it('an abort with a read ahead in flight loses no record', async () => {
    const h = await harness();
    const controller = new AbortController();
    let commits = 0;
    const first = await runShardWorker(h.job({ readMs: 20 }), h.shardId, {
      ...options,
      signal: controller.signal,
      onCommit: () => {
        if (++commits === 4) controller.abort();
      },
    });
    expect(first.caughtUp).toBe(false);
    expect(first.records).toBeLessThan(1500);
    // A clean end does not wait for the discarded read ahead; the reader is closed once it settled.
    await until(() => h.events.some((e) => e.kind === 'close'));
    expect(h.events.find((e) => e.kind === 'close')).toEqual({ kind: 'close', readsInFlight: 0 });
    const second = await runShardWorker(h.job(), h.shardId, { ...options, owner: 'w2' });
    expect(first.records + second.records).toBe(1500);
    expect(byId(h.published)).toEqual(await reference());
  });
});

/** Waits (a few event-loop turns at a time, not a wall-clock time) until `done()` holds. */
async function until(done: () => boolean): Promise<void> {
  for (let turns = 0; !done(); turns++) {
    if (turns > 10_000) throw new Error('until: the condition never held');
    await new Promise((resolve) => setImmediate(resolve));
  }
}

/**
 * One shard whose reads are scripted: `script(n, read, options)` answers read n (1-based), given the
 * options the worker passed (`read` reads the next records of a MemoryStream of page views).
 * `afterCommit` runs once a commit took effect.
 */
async function scriptedJob(
  clock: () => number,
  script: (
    n: number,
    read: () => Promise<ReadResult>,
    options: { timeLeftMs?: number } | undefined,
  ) => Promise<ReadResult>,
  afterCommit: () => void = () => {},
): Promise<{ job: JobRuntime; shardId: string; closed: () => boolean; published: Output[] }> {
  const stream = new MemoryStream(1, () => T0);
  const encoder = new TextEncoder();
  for (const view of clickstream({ events: 300, pages: 10, users: 30, seed: 5 })) {
    stream.put(view.page, encoder.encode(JSON.stringify(view)), T0);
  }
  const shardId = (await stream.listShards())[0]!.shardId;
  let reads = 0;
  let closed = false;
  const published: Output[] = [];
  const source: ShardSource = {
    listShards: () => stream.listShards(),
    async openReader(id, position) {
      const inner = await stream.openReader(id, position);
      const reader = {
        read: (limit: number, options?: { timeLeftMs?: number }) =>
          script(++reads, () => inner.read(limit), options),
        async close() {
          closed = true;
        },
      };
      return reader;
    },
  };
  const backend = new MemoryBackend();
  const store = Object.create(backend) as MemoryBackend;
  store.commit = async (lease: Lease, commit: Commit) => {
    await backend.commit(lease, commit);
    afterCommit();
  };
  return {
    job: {
      job: 'deadline-test',
      plan: compile(pageViews),
      source,
      backend: store,
      sink: { publish: async (outputs) => void published.push(...outputs) },
      clock,
    },
    shardId,
    closed: () => closed,
    published,
  };
}

describe('runShardWorker time budget', () => {
  const budget = 50_000;
  const budgetOptions = { owner: 'w', batchSize: 100, leaseTtlMs: 600_000, timeBudgetMs: budget };

  it('tells every read the time left in the budget; a read that runs out of it (empty, behind) ends the invocation with a commit', async () => {
    let now = T0 + 86_400_000;
    const timesLeft: (number | undefined)[] = [];
    const { job, shardId, closed } = await scriptedJob(
      () => now,
      async (n, read, options) => {
        timesLeft.push(options?.timeLeftMs);
        if (n === 1) {
          const result = await read();
          now += 1_000;
          return result;
        }
        // Read 2 (the read ahead) was throttled until the deadline: a KinesisShardReader then
        // returns at it with no records, behind (not caught up).
        now += options?.timeLeftMs ?? budget;
        return { records: [], millisBehindLatest: 1, shardEnded: false };
      },
    );
    const result = await runShardWorker(job, shardId, { ...budgetOptions, commitIntervalMs: 3_600_000 });
    // read 1 at the start, read 2 (the read ahead) 1 s later
    expect(timesLeft).toEqual([budget, budget - 1_000]);
    // Read 1's 100 records, uncommitted in the interval, are committed at the end.
    expect(result).toMatchObject({ records: 100, commits: 1, caughtUp: false, finished: false });
    const checkpoint = await job.backend.readCheckpoint(shardId);
    expect(checkpoint?.commitNumber).toBe(1);
    expect(closed()).toBe(true);
  });

  it('returns at a clean end without waiting for the read ahead it discards, and closes the reader once that settles', async () => {
    let now = T0 + 86_400_000;
    let failReadAhead: (error: Error) => void = () => {};
    let readAheadStarted = false;
    const { job, shardId, closed } = await scriptedJob(
      () => now,
      async (n, read) => {
        if (n === 1) return read();
        // Read 2, the read ahead, hangs (a throttled read) and then fails.
        readAheadStarted = true;
        return new Promise<ReadResult>((_, reject) => {
          failReadAhead = reject;
        });
      },
      () => {
        // The budget runs out while read 1 is committed; read 2 is in flight then.
        now += budget;
      },
    );
    const result = await runShardWorker(job, shardId, budgetOptions);
    expect(readAheadStarted).toBe(true);
    expect(result).toMatchObject({ records: 100, commits: 1, caughtUp: false });
    expect(closed()).toBe(false);
    // Its failure is no unhandled rejection (Vitest would report it) and nothing else.
    failReadAhead(new Error('GetRecords throttled'));
    await until(closed);
    expect((await job.backend.readCheckpoint(shardId))?.commitNumber).toBe(1);
  });
});

/** Output values as a sorted multiset: the same results whatever the commits' grouping (ids). */
function values(outputs: readonly Output[]): string[] {
  return outputs.map((o) => `${o.sink} ${JSON.stringify(o.value)}`).sort();
}

describe('runShardWorker state cache', () => {
  it('maxCachedKeys bounds the cached keys without changing the outputs', async () => {
    const expected = await reference();
    const h = await harness();
    await runShardWorker(h.job({ readMs: 0, commitMs: 0 }), h.shardId, { ...options, maxCachedKeys: 3 });
    expect(byId(h.published)).toEqual(expected);
    // 40 pages, so keys were dropped and read again.
    expect(h.backend.reads.entries).toBeGreaterThan(40);
  });

  it('rejects a bad maxCachedKeys', async () => {
    const h = await harness();
    await expect(runShardWorker(h.job(), h.shardId, { ...options, maxCachedKeys: 0 })).rejects.toThrow(
      /maxCachedKeys must be a whole number >= 1; received 0/,
    );
  });
});

describe('runShardWorker startOfShard (a worker told only its shard, as a Lambda invocation)', () => {
  /** The harness's job, whose backend counts its checkpoint reads. */
  const counted = (h: Harness): { job: JobRuntime; checkpointReads: () => number } => {
    const job = h.job({ readMs: 0, commitMs: 0 });
    let reads = 0;
    const read = job.backend.readCheckpoint.bind(job.backend);
    job.backend.readCheckpoint = (shardId) => {
      reads++;
      return read(shardId);
    };
    return { job, checkpointReads: () => reads };
  };

  it('is asked under the lease only when the checkpoint read there finds none; the checkpoint is read once', async () => {
    const h = await harness();
    const first = counted(h);
    const asked: string[] = [];
    const startOfShard = async () => {
      // Under the worker's lease: another owner cannot take the shard.
      const probe = h.backend.acquireLease(h.shardId, 'probe', T0 + 86_400_000, 1000);
      asked.push(
        await probe.then(
          () => 'not held',
          (error: Error) => error.name,
        ),
      );
      return { initial: undefined };
    };
    const result = await runShardWorker(first.job, h.shardId, { ...options, startOfShard });
    expect(result).toMatchObject({ records: 1500, caughtUp: true });
    expect(result.notStarted).toBeUndefined();
    expect(asked).toEqual(['LeaseUnavailableError']);
    expect(first.checkpointReads()).toBe(1);
    // A later run has a checkpoint: not asked; one read.
    const later = counted(h);
    await runShardWorker(later.job, h.shardId, { ...options, startOfShard });
    expect(asked).toHaveLength(1);
    expect(later.checkpointReads()).toBe(1);
  });

  it('a shard that may not run yet: nothing read or committed, notStarted, the lease released', async () => {
    const h = await harness();
    const { job } = counted(h);
    const result = await runShardWorker(job, h.shardId, { ...options, startOfShard: async () => undefined });
    expect(result).toMatchObject({ records: 0, commits: 0, finished: false, notStarted: true });
    expect(h.events).toEqual([]);
    expect(await h.backend.readCheckpoint(h.shardId)).toBeUndefined();
    // Released: another owner takes the shard at once.
    await expect(h.backend.acquireLease(h.shardId, 'other', T0 + 86_400_000, 1000)).resolves.toBeDefined();
  });
});

describe('runShardWorker lease expiry at a commit', () => {
  it('a worker whose lease ran out while it committed publishes nothing more: the new owner publishes that commit, once', async () => {
    const expected = await reference();
    const h = await harness();
    const ttl = 10_000;
    let now = T0 + 86_400_000;
    const clock = (): number => now;
    let takenOver = false;
    const zombie = h.job({
      clock,
      async afterCommit(n) {
        if (n !== 2) return;
        // Commit 2 landed, then its worker stalled past its lease: another worker takes the
        // shard over (publishing commit 2 from the outbox) and runs it to the end.
        now += 2 * ttl;
        await runShardWorker(h.job({ clock }), h.shardId, { ...options, owner: 'b', leaseTtlMs: ttl });
        takenOver = true;
      },
    });
    await expect(runShardWorker(zombie, h.shardId, { ...options, leaseTtlMs: ttl })).rejects.toThrow(
      FencedError,
    );
    expect(takenOver).toBe(true);
    const ids = h.published.map((o) => o.id);
    expect(ids.filter((id) => id.split('/').at(-2) === '2').length).toBeGreaterThan(0);
    expect(ids.length - new Set(ids).size).toBe(0); // nothing published twice
    expect(byId(h.published)).toEqual(expected);
  });
});

describe('runShardWorker commit interval', () => {
  const referenceValues = async (): Promise<string[]> => {
    const h = await harness();
    await runShardWorker(h.job({ readMs: 0, commitMs: 0 }), h.shardId, options);
    return values(h.published);
  };

  it('shares one commit between the reads of an interval, and commits when caught up', async () => {
    const h = await harness();
    // The harness clock stands still: the interval never ends, only catching up commits.
    const result = await runShardWorker(h.job({ readMs: 0, commitMs: 0 }), h.shardId, {
      ...options,
      commitIntervalMs: 60_000,
    });
    expect(result).toMatchObject({ records: 1500, commits: 1, caughtUp: true });
    expect(h.events.filter((e) => e.kind === 'read-end').length).toBeGreaterThan(10);
    expect(values(h.published)).toEqual(await referenceValues());
    expect((await h.backend.readCheckpoint(h.shardId))?.commitNumber).toBe(1);
  });

  it('commits once maxUncommittedRecords are pending', async () => {
    const h = await harness();
    const result = await runShardWorker(h.job({ readMs: 0, commitMs: 0 }), h.shardId, {
      ...options,
      commitIntervalMs: 60_000,
      maxUncommittedRecords: 500,
    });
    expect(result.records).toBe(1500);
    // After 500, 1000 and 1500 records; then the caught-up read's idleness fires the last windows.
    expect(result.commits).toBe(4);
    expect(values(h.published)).toEqual(await referenceValues());
  });

  it('a failed commit of an interval loses nothing: the next invocation reads the interval again', async () => {
    const h = await harness();
    await expect(
      runShardWorker(h.job({ failCommit: 2, readMs: 0, commitMs: 0 }), h.shardId, {
        ...options,
        commitIntervalMs: 60_000,
        maxUncommittedRecords: 400,
      }),
    ).rejects.toThrow('commit 2 failed');
    expect((await h.backend.readCheckpoint(h.shardId))?.commitNumber).toBe(1);
    await runShardWorker(h.job(), h.shardId, { ...options, owner: 'w2', commitIntervalMs: 60_000 });
    expect(values(h.published)).toEqual(await referenceValues());
    expect(new Set(h.published.map((o) => o.id)).size).toBe(h.published.length);
  });

  it('an abort commits the reads processed so far', async () => {
    const h = await harness();
    const controller = new AbortController();
    let reads = 0;
    const job = h.job({ readMs: 0, commitMs: 0 });
    const source = job.source;
    const first = await runShardWorker(
      {
        ...job,
        source: {
          listShards: () => source.listShards(),
          async openReader(id, position) {
            const reader = await source.openReader(id, position);
            return {
              async read(limit) {
                if (++reads === 4) controller.abort();
                return reader.read(limit);
              },
              close: () => reader.close?.() ?? Promise.resolve(),
            };
          },
        },
      },
      h.shardId,
      { ...options, commitIntervalMs: 60_000, signal: controller.signal },
    );
    expect(first.commits).toBe(1);
    expect(first.records).toBeGreaterThan(0);
    expect(first.records).toBeLessThan(1500);
    const second = await runShardWorker(h.job(), h.shardId, { ...options, owner: 'w2' });
    expect(first.records + second.records).toBe(1500);
    expect(values(h.published)).toEqual(await referenceValues());
  });

  it('rejects a bad interval', async () => {
    const h = await harness();
    await expect(runShardWorker(h.job(), h.shardId, { ...options, commitIntervalMs: -1 })).rejects.toThrow(
      /commitIntervalMs must be a number of milliseconds >= 0; received -1/,
    );
  });
});

describe('runShardWorker checked pass', () => {
  it('a record that changed a state object in place and then failed: processed again in the checked pass, dead-lettered with no effect', async () => {
    interface Buy {
      readonly user: string;
      readonly ts: number;
      readonly cents?: number;
    }
    const p = pipeline('baskets');
    p.source<Buy>()
      .withTimestamps((b) => b.ts, boundedOutOfOrderness(0))
      .keyBy((b) => b.user)
      .process<{ user: string; total: number }, { basket: ReturnType<typeof valueState<{ total: number }>> }>(
        {
          state: { basket: valueState<{ total: number }>() },
          processElement(b, ctx) {
            const basket = ctx.state.basket.value() ?? { total: 0 };
            basket.total += 1_000; // changed in place before the poison check below
            if (b.cents === undefined) throw new Error('no amount');
            basket.total += b.cents - 1_000;
            ctx.state.basket.update(basket);
            ctx.emit({ user: b.user, total: basket.total });
          },
        },
      )
      .sink('out');
    const stream = new MemoryStream(1, () => T0);
    const encoder = new TextEncoder();
    const buys: Buy[] = [];
    for (let i = 0; i < 60; i++)
      buys.push({ user: `u${i % 3}`, ts: i, ...(i % 25 === 7 ? {} : { cents: i }) });
    for (const b of buys) stream.put(b.user, encoder.encode(JSON.stringify(b)), T0);
    const shardId = (await stream.listShards())[0]!.shardId;
    const published: Output[] = [];
    const retries: Error[] = [];
    const backend = new MemoryBackend();
    const result = await runShardWorker(
      {
        job: 'baskets',
        plan: compile(p),
        source: stream,
        backend,
        sink: { publish: async (outputs) => void published.push(...outputs) },
      },
      shardId,
      { ...options, batchSize: 20, commitIntervalMs: 0, onCheckedRetry: (e) => retries.push(e) },
    );
    expect(result.records).toBe(60);
    // One replay: the first poison record (8) stops the fast pass, before any commit; the checked
    // pass then runs the rest of the invocation.
    expect(retries).toEqual([expect.any(RollbackNeedsReplayError)]);
    const dead = published
      .filter((o) => o.sink === DEAD_LETTER_SINK)
      .map((o) => (o.value as DeadLetter).sequenceNumber);
    expect(dead).toEqual(['8', '33', '58']);
    // Every total is the sum of the user's amounts so far, as if the poison records were not there.
    const totals = new Map<string, number>();
    const expected = buys
      .filter((b) => b.cents !== undefined)
      .map((b) => {
        const total = (totals.get(b.user) ?? 0) + b.cents!;
        totals.set(b.user, total);
        return { user: b.user, total };
      });
    expect(published.filter((o) => o.sink === 'out').map((o) => o.value)).toEqual(expected);
  });
});
