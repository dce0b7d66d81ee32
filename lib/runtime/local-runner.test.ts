/** The local runner (runJob): what its summary counts. */
import { describe, expect, it } from 'vitest';
import pageViews from '../../examples/page-views.ts';
import { type Commit, compile, FencedError, type Lease, MemoryBackend } from '../core/index.ts';
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
