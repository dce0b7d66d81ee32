/** The local runner (runJob): what its summary counts. */
import { describe, expect, it } from 'vitest';
import pageViews from '../../examples/page-views.ts';
import {
  type Commit,
  compile,
  FencedError,
  type Lease,
  MemoryBackend,
  pipeline,
  type ShardSource,
  valueState,
} from '../core/index.ts';
import { clickstream } from './clickstream.ts';
import { runJob } from './local-runner.ts';
import { MemoryStream } from './testing/memory-stream.ts';

/** A backend whose `failAt`-th commit fails as if another worker had taken the lease over. */
class TakenOverOnce extends MemoryBackend {
  private commits = 0;
  constructor(private readonly failAt: number) {
    super();
  }
  override async commit(lease: Lease, commit: Commit): Promise<void> {
    if (++this.commits === this.failAt) throw new FencedError(`shard ${lease.shardId} was taken over`);
    await super.commit(lease, commit);
  }
}

describe('runJob summary', () => {
  it('counts the commits a worker made before it was fenced', async () => {
    const stream = new MemoryStream(1, () => 0);
    const encoder = new TextEncoder();
    const T0 = Date.UTC(2026, 0, 2);
    for (const view of clickstream({ events: 1000, pages: 30, users: 200, seed: 4 })) {
      stream.put(view.page, encoder.encode(JSON.stringify(view)), T0);
    }
    const backend = new TakenOverOnce(4);
    const summary = await runJob(
      {
        job: 'fenced',
        plan: compile(pageViews),
        source: stream,
        backend,
        sink: { publish: async () => {} },
        clock: () => T0 + 86_400_000,
      },
      { untilIdle: true, idlePollMs: 1, roundPauseMs: 1, batchSize: 100 },
    );
    // Every record was committed once: three batches before the failed commit, the rest after.
    const checkpoints = await backend.listCheckpoints();
    expect(checkpoints.map((c) => c.commitNumber)).toEqual([summary.commits]);
    expect(summary.records).toBe(1000);
  });
});

describe('runJob stopping on an error', () => {
  it("lets the other shards' workers stop and release their leases before it throws", async () => {
    // The page-views pipeline over a stream partitioned by user: its first commit of a page
    // another shard already wrote fails the co-partitioning check (a ConfigurationError).
    const stream = new MemoryStream(4, () => 0);
    const encoder = new TextEncoder();
    const T0 = Date.UTC(2026, 0, 2);
    for (const view of clickstream({ events: 2000, pages: 30, users: 200, seed: 4 })) {
      stream.put(view.user, encoder.encode(JSON.stringify(view)), T0);
    }
    const backend = new MemoryBackend();
    const now = T0 + 86_400_000;
    await expect(
      runJob(
        {
          job: 'stops',
          plan: compile(pageViews),
          source: stream,
          backend,
          sink: { publish: async () => {} },
          clock: () => now,
        },
        { untilIdle: true, idlePollMs: 1, roundPauseMs: 1, batchSize: 10 },
      ),
    ).rejects.toThrow(/does not follow the stream's partition key/);
    // Nothing of the run goes on after it threw: a new run takes every shard at once.
    for (const shard of await stream.listShards()) {
      await backend.acquireLease(shard.shardId, 'next-run', now, 30_000);
    }
  });
});

describe('runJob keeping tasks between rounds', () => {
  it('keeps a task caching more than 100,000 keys when maxCachedKeys allows it: no key is read twice', async () => {
    // One shard: 110,000 distinct keys, then the first 10,000 again. Each read moves the clock
    // past the budget, so every round is one batch: a task that was kept has the keys cached,
    // one that was not reads them again.
    const stream = new MemoryStream(1, () => 0);
    const encoder = new TextEncoder();
    const keys = 110_000;
    for (let i = 0; i < keys + 10_000; i++) {
      const k = `k${i % keys}`;
      stream.put(k, encoder.encode(JSON.stringify({ k })), 0);
    }
    let now = 0;
    const source: ShardSource = {
      listShards: () => stream.listShards(),
      async openReader(shardId, position) {
        const reader = await stream.openReader(shardId, position);
        return {
          async read(limit, options) {
            const result = await reader.read(limit, options);
            now += 1_000;
            return result;
          },
        };
      },
    };
    const p = pipeline('many-keys');
    p.source<{ k: string }>()
      .keyBy((e) => e.k)
      .process({
        state: { n: valueState<number>() },
        processElement(_e, ctx) {
          ctx.state.n.update((ctx.state.n.value() ?? 0) + 1);
        },
      })
      .sink('out');
    const backend = new MemoryBackend();
    let reads = 0;
    const store = Object.create(backend) as MemoryBackend;
    store.getMany = (addresses) => {
      reads += addresses.length;
      return backend.getMany(addresses);
    };
    const summary = await runJob(
      {
        job: 'many-keys',
        plan: compile(p),
        source,
        backend: store,
        sink: { publish: async () => {} },
        clock: () => now,
      },
      { untilIdle: true, roundPauseMs: 0, batchSize: 10_000, timeBudgetMs: 1_000, maxCachedKeys: 200_000 },
    );
    expect(summary.records).toBe(keys + 10_000);
    expect(summary.commits).toBe(12);
    expect(reads, 'state entries read').toBe(keys);
  });
});
