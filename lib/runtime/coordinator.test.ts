import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import {
  boundedOutOfOrderness,
  compile,
  hashKey,
  initialCheckpoint,
  MemoryBackend,
  type Output,
  pipeline,
  type ShardCheckpoint,
  type ShardInfo,
  type TimerSpec,
} from '../core/index.ts';
import {
  type CoordinatorDeps,
  childCheckpoint,
  coordinateRound,
  runnableShards,
  startOfShard,
} from './coordinator.ts';
import { runJob } from './local-runner.ts';
import { MemorySink, MemoryStream } from './testing/memory-stream.ts';

function checkpoint(shardId: string, changes: Partial<ShardCheckpoint> = {}): ShardCheckpoint {
  return { ...initialCheckpoint(shardId), commitNumber: 1, position: '1', ...changes };
}

function finished(shardId: string, changes: Partial<ShardCheckpoint> = {}): ShardCheckpoint {
  return checkpoint(shardId, { finished: true, ...changes });
}

function byId(...list: ShardCheckpoint[]): Map<string, ShardCheckpoint> {
  return new Map(list.map((c) => [c.shardId, c]));
}

function timer(key: string | number, time = 1000, namespace: string | number = ''): TimerSpec {
  return { operator: 'window-0', domain: 'event', time, key, namespace };
}

const ids = (plans: ReturnType<typeof runnableShards>): string[] => plans.map((p) => p.shard.shardId);

/** A key whose MD5 hash falls in [start, end]. */
function keyIn(range: { start: string; end: string }, prefix = 'k'): string {
  for (let i = 0; i < 100_000; i++) {
    const h = hashKey(`${prefix}${i}`);
    if (h >= BigInt(range.start) && h <= BigInt(range.end)) return `${prefix}${i}`;
  }
  throw new Error('no key found');
}

async function shardsOf(stream: MemoryStream): Promise<Map<string, ShardInfo>> {
  return new Map((await stream.listShards()).map((s) => [s.shardId, s]));
}

describe('runnableShards', () => {
  it('runs every shard of a new job, with no inherited checkpoint', async () => {
    const stream = new MemoryStream(4);
    const plans = runnableShards(await stream.listShards(), new Map());
    expect(ids(plans)).toEqual((await stream.listShards()).map((s) => s.shardId));
    expect(plans.every((p) => p.initial === undefined)).toBe(true);
  });

  it('skips finished shards and resumes unfinished ones from their own checkpoint', async () => {
    const stream = new MemoryStream(3);
    const [a, b, c] = (await stream.listShards()).map((s) => s.shardId);
    const plans = runnableShards(await stream.listShards(), byId(finished(a!), checkpoint(b!)));
    expect(ids(plans)).toEqual([b, c]);
    expect(plans.every((p) => p.initial === undefined)).toBe(true);
  });

  it('split: children wait until the parent is finished, then start from its checkpoint', async () => {
    const stream = new MemoryStream(2);
    const [p0, p1] = (await stream.listShards()).map((s) => s.shardId);
    const [c0, c1] = stream.split(p0!);
    const shards = await stream.listShards();

    expect(ids(runnableShards(shards, new Map()))).toEqual([p0, p1]);
    expect(ids(runnableShards(shards, byId(checkpoint(p0!, { watermark: 500 }))))).toEqual([p0, p1]);

    const parent = finished(p0!, { watermark: 500, maxTimestamp: 5501 });
    const plans = runnableShards(shards, byId(parent));
    expect(ids(plans)).toEqual([p1, c0, c1]);
    for (const plan of plans.slice(1)) {
      expect(plan.initial).toEqual(childCheckpoint(plan.shard, [parent], shards));
      expect(plan.initial?.watermark).toBe(500);
      // One reshard deeper than the parent: its state writes win over a stalled parent's.
      expect(plan.initial?.depth).toBe(1);
    }
  });

  it('merge: the child waits for both parents and starts at the lower watermark', async () => {
    const stream = new MemoryStream(2);
    const [p0, p1] = (await stream.listShards()).map((s) => s.shardId);
    const child = stream.merge(p0!, p1!);
    const shards = await stream.listShards();

    expect(ids(runnableShards(shards, byId(finished(p0!, { watermark: 900 }))))).toEqual([p1]);
    const plans = runnableShards(
      shards,
      byId(finished(p0!, { watermark: 900 }), finished(p1!, { watermark: 300 })),
    );
    expect(ids(plans)).toEqual([child]);
    expect(plans[0]!.initial?.watermark).toBe(300);
    // Deeper than the deepest parent.
    const deep = runnableShards(
      shards,
      byId(finished(p0!, { watermark: 900, depth: 2 }), finished(p1!, { watermark: 300 })),
    );
    expect(deep[0]!.initial?.depth).toBe(3);
  });

  it('a child with its own checkpoint resumes from it, not from its parents', async () => {
    const stream = new MemoryStream(1);
    const [p0] = (await stream.listShards()).map((s) => s.shardId);
    const [c0, c1] = stream.split(p0!);
    const plans = runnableShards(
      await stream.listShards(),
      byId(finished(p0!, { watermark: 10 }), checkpoint(c0!, { watermark: 99 })),
    );
    expect(ids(plans)).toEqual([c0, c1]);
    expect(plans[0]!.initial).toBeUndefined();
    expect(plans[1]!.initial?.watermark).toBe(10);
  });

  it('a parent gone from the stream (trimmed after retention) counts as finished', async () => {
    const stream = new MemoryStream(1);
    const [p0] = (await stream.listShards()).map((s) => s.shardId);
    const [c0, c1] = stream.split(p0!);
    const listed = (await stream.listShards()).filter((s) => s.shardId !== p0);
    expect(ids(runnableShards(listed, new Map()))).toEqual([c0, c1]);
    // Its checkpoint, if still there, is inherited even though it is not marked finished.
    const plans = runnableShards(listed, byId(checkpoint(p0!, { watermark: 42 })));
    expect(plans.map((p) => p.initial?.watermark)).toEqual([42, 42]);
  });

  it('property: after any reshard history, a shard runs only when all its parents are done, and every such shard runs', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.tuple(fc.boolean(), fc.nat(), fc.nat()), { maxLength: 8 }),
        fc.array(fc.boolean(), { minLength: 24, maxLength: 24 }),
        fc.integer({ min: 1, max: 4 }),
        async (ops, done, count) => {
          const stream = new MemoryStream(count);
          for (const [split, a, b] of ops) {
            const open = (await stream.listShards()).filter((s) => !s.closed);
            if (split || open.length < 2) {
              stream.split(open[a % open.length]!.shardId);
            } else {
              // Merge two adjacent open shards.
              const sorted = [...open].sort((x, y) =>
                BigInt(x.hashKeyRange.start) < BigInt(y.hashKeyRange.start) ? -1 : 1,
              );
              const i = b % (sorted.length - 1);
              stream.merge(sorted[i]!.shardId, sorted[i + 1]!.shardId);
            }
          }
          const shards = await stream.listShards();
          // Closed shards may be finished; open shards never are.
          const checkpoints = byId(
            ...shards.filter((s, i) => s.closed && done[i % done.length]).map((s) => finished(s.shardId)),
          );
          const isDone = (id: string): boolean => checkpoints.get(id)?.finished === true;
          const plans = runnableShards(shards, checkpoints);
          const running = new Set(ids(plans));
          for (const s of shards) {
            const ready = !isDone(s.shardId) && s.parentShardIds.every(isDone);
            expect(running.has(s.shardId), s.shardId).toBe(ready);
          }
          // A child never runs beside its parent.
          for (const p of plans)
            for (const parent of p.shard.parentShardIds) expect(running.has(parent)).toBe(false);
        },
      ),
      { numRuns: 100 },
    );
  });
});

describe('childCheckpoint', () => {
  it('merge: minimum watermark and max timestamp of the parents, union of their timers, a fresh position', async () => {
    const stream = new MemoryStream(2);
    const [p0, p1] = (await stream.listShards()).map((s) => s.shardId);
    const childId = stream.merge(p0!, p1!);
    const shards = await stream.listShards();
    const child = (await shardsOf(stream)).get(childId)!;
    const a = finished(p0!, {
      watermark: 1_000,
      maxTimestamp: 6_001,
      commitNumber: 17,
      position: '40',
      timers: [timer('a', 2_000), timer('b', 3_000)],
    });
    const b = finished(p1!, {
      watermark: 700,
      maxTimestamp: 5_701,
      commitNumber: 9,
      position: '41',
      timers: [timer('c', 1_500)],
    });
    const cp = childCheckpoint(child, [a, b], shards);
    expect(cp).toMatchObject({
      shardId: childId,
      watermark: 700,
      maxTimestamp: 5_701,
      position: undefined,
      commitNumber: 0,
      finished: false,
    });
    expect([...cp.timers].sort((x, y) => x.time - y.time)).toEqual([
      timer('c', 1_500),
      timer('a', 2_000),
      timer('b', 3_000),
    ]);
    // Order of the parents does not matter.
    expect(childCheckpoint(child, [b, a], shards).watermark).toBe(700);
  });

  it('split: each timer goes to the child whose hash-key range owns its key', async () => {
    const stream = new MemoryStream(1);
    const [p0] = (await stream.listShards()).map((s) => s.shardId);
    const [c0, c1] = stream.split(p0!);
    const shards = await stream.listShards();
    const info = await shardsOf(stream);
    const low = info.get(c0!)!;
    const high = info.get(c1!)!;
    const keys = [
      keyIn(low.hashKeyRange, 'low-'),
      keyIn(high.hashKeyRange, 'high-'),
      ...Array.from({ length: 40 }, (_, i) => `user-${i}`),
    ];
    const timers = keys.flatMap((k, i) => [timer(k, 1_000 + i), timer(k, 60_000 + i, 'w')]);
    const parent = finished(p0!, { watermark: 999, timers });
    const lowCp = childCheckpoint(low, [parent], shards);
    const highCp = childCheckpoint(high, [parent], shards);
    const inRange = (s: ShardInfo, key: string | number): boolean => {
      const h = hashKey(String(key));
      return h >= BigInt(s.hashKeyRange.start) && h <= BigInt(s.hashKeyRange.end);
    };
    expect(lowCp.timers.every((t) => inRange(low, t.key))).toBe(true);
    expect(highCp.timers.every((t) => inRange(high, t.key))).toBe(true);
    expect(lowCp.timers.length).toBeGreaterThan(2);
    expect(highCp.timers.length).toBeGreaterThan(2);
    // A partition: every timer exactly once.
    expect([...lowCp.timers, ...highCp.timers].sort(compareTimers)).toEqual([...timers].sort(compareTimers));
    expect(lowCp.watermark).toBe(999);
    expect(highCp.watermark).toBe(999);
  });

  it('split: numeric keys are hashed as their decimal string', async () => {
    const stream = new MemoryStream(1);
    const [p0] = (await stream.listShards()).map((s) => s.shardId);
    const [c0, c1] = stream.split(p0!);
    const shards = await stream.listShards();
    const info = await shardsOf(stream);
    const parent = finished(p0!, { timers: Array.from({ length: 20 }, (_, i) => timer(i)) });
    for (const id of [c0!, c1!]) {
      const s = info.get(id)!;
      for (const t of childCheckpoint(s, [parent], shards).timers) {
        const h = hashKey(String(t.key));
        expect(h >= BigInt(s.hashKeyRange.start) && h <= BigInt(s.hashKeyRange.end)).toBe(true);
      }
    }
  });

  it('split: a timer whose key is owned by no child (not co-partitioned) stays on the first child only', async () => {
    const stream = new MemoryStream(2);
    const [p0, p1] = (await stream.listShards()).map((s) => s.shardId);
    const [c0, c1] = stream.split(p0!);
    const shards = await stream.listShards();
    const info = await shardsOf(stream);
    const foreign = keyIn(info.get(p1!)!.hashKeyRange, 'foreign-');
    const parent = finished(p0!, { timers: [timer(foreign)] });
    expect(childCheckpoint(info.get(c0!)!, [parent], shards).timers).toEqual([timer(foreign)]);
    expect(childCheckpoint(info.get(c1!)!, [parent], shards).timers).toEqual([]);
  });

  it('an only child keeps every timer of its parent', async () => {
    const stream = new MemoryStream(2);
    const [p0, p1] = (await stream.listShards()).map((s) => s.shardId);
    const child = stream.merge(p0!, p1!);
    const shards = await stream.listShards();
    const timers = Array.from({ length: 10 }, (_, i) => timer(`k${i}`));
    const cp = childCheckpoint(
      (await shardsOf(stream)).get(child)!,
      [finished(p0!, { timers }), finished(p1!)],
      shards,
    );
    expect(cp.timers).toEqual(timers);
  });

  // A parent that never saw an element (a cold shard merged away when scaling down) has
  // watermark and max timestamp -Infinity; were the child to start there, it could not go idle
  // (idleness needs a max timestamp) and the windows inherited from the other parent would wait
  // for a new record. The child takes the minimum over the parents that saw elements.
  it('merge with a parent that never saw an element continues from the other parent’s event time', async () => {
    const stream = new MemoryStream(2);
    const [p0, p1] = (await stream.listShards()).map((s) => s.shardId);
    const child = stream.merge(p0!, p1!);
    const shards = await stream.listShards();
    const busy = finished(p0!, {
      watermark: 1_000,
      maxTimestamp: 6_001,
      lastRecordAt: 50,
      timers: [timer('a', 2_000)],
    });
    const empty = finished(p1!, { position: undefined });
    const cp = childCheckpoint((await shardsOf(stream)).get(child)!, [busy, empty], shards);
    expect(cp).toMatchObject({ watermark: 1_000, maxTimestamp: 6_001, timers: [timer('a', 2_000)] });
  });

  // Idleness needs a last record time: a child starting without one would never advance if it
  // received no records, and the windows it inherited would never fire. It inherits the
  // parents' latest.
  it('inherits the parents’ last record time, so an idle child still advances by idleness', async () => {
    const stream = new MemoryStream(1);
    const [p0] = (await stream.listShards()).map((s) => s.shardId);
    const [c0] = stream.split(p0!);
    const shards = await stream.listShards();
    const parent = finished(p0!, { watermark: 10, maxTimestamp: 5_011, lastRecordAt: 123_456 });
    expect(childCheckpoint((await shardsOf(stream)).get(c0!)!, [parent], shards).lastRecordAt).toBe(123_456);
  });
});

function compareTimers(a: TimerSpec, b: TimerSpec): number {
  const x = JSON.stringify([a.key, a.time, a.namespace]);
  const y = JSON.stringify([b.key, b.time, b.namespace]);
  return x < y ? -1 : x > y ? 1 : 0;
}

describe('coordinateRound', () => {
  /** Commits `cp` (commit number 1) with `outputs` left unpublished in the shard's outbox. */
  async function commit(backend: MemoryBackend, cp: ShardCheckpoint, outputs: Output[] = []): Promise<void> {
    const lease = await backend.acquireLease(cp.shardId, 'earlier-worker', 0, 1);
    await backend.commit(lease, { checkpoint: cp, mutations: [], outputs });
  }
  const started = (): { calls: Array<[string, ShardCheckpoint | undefined]>; deps: CoordinatorDeps } => {
    const calls: Array<[string, ShardCheckpoint | undefined]> = [];
    return {
      calls,
      deps: {
        isLeaseLive: async () => false,
        startWorker: async (shardId, initial) => {
          calls.push([shardId, initial]);
        },
      },
    };
  };

  it('starts a worker for a finished shard whose outbox holds outputs (it publishes them under the lease); its children start once they are published', async () => {
    const source = new MemoryStream(2);
    const [p0, p1] = (await source.listShards()).map((s) => s.shardId);
    const [c0, c1] = source.split(p0!);
    const backend = new MemoryBackend();
    await commit(backend, finished(p0!), [{ id: `j/${p0}/1/0`, sink: 'out', value: 1 }]);
    const { calls, deps } = started();
    const round = await coordinateRound({ source, backend }, deps);
    // p0's children wait for its last outputs: published after a child's newer output for the same
    // key, one of them would replace it in an upsert sink (which orders writes within a shard).
    expect(round).toEqual({ started: [p0, p1], running: [], finished: [p0], failed: [] });
    expect(calls.map(([id]) => id)).toEqual([p0, p1]);
    expect(calls[0]![1]).toBeUndefined();
    expect(await startOfShard({ source, backend }, c0!)).toBeUndefined();
    // The coordinator publishes nothing itself.
    expect(await backend.unpublishedOutputs(p0!)).toHaveLength(1);

    await backend.markPublished(p0!, [`j/${p0}/1/0`]);
    const next = started();
    expect((await coordinateRound({ source, backend }, next.deps)).started).toEqual([p1, c0, c1]);
    expect(await startOfShard({ source, backend }, c0!)).toBeDefined();
  });

  it('does not start shards a live lease holds', async () => {
    const source = new MemoryStream(2);
    const [p0, p1] = (await source.listShards()).map((s) => s.shardId);
    const round = await coordinateRound(
      { source, backend: new MemoryBackend() },
      { isLeaseLive: async (id) => id === p0, startWorker: async () => {} },
    );
    expect(round).toEqual({ started: [p1], running: [p0], finished: [], failed: [] });
  });

  it('a worker that fails to start does not keep the other shards from starting', async () => {
    const source = new MemoryStream(3);
    const [a, b, c] = (await source.listShards()).map((s) => s.shardId);
    const refused = new Error('RequestEntityTooLargeException');
    const calls: string[] = [];
    const round = await coordinateRound(
      { source, backend: new MemoryBackend() },
      {
        isLeaseLive: async () => false,
        startWorker: async (shardId) => {
          calls.push(shardId);
          if (shardId === a) throw refused;
        },
      },
    );
    expect(calls).toEqual([a, b, c]);
    expect(round).toEqual({
      started: [b, c],
      running: [],
      finished: [],
      failed: [{ shardId: a, error: refused }],
    });
  });
});

describe('startOfShard (where a Lambda worker of a shard without a checkpoint starts)', () => {
  it('a parent trimmed from the stream before it finished: its children inherit the timers its timer log holds', async () => {
    const p = pipeline('trim');
    p.source<{ k: string; ts: number }>()
      .withTimestamps((e) => e.ts, boundedOutOfOrderness(0))
      .keyBy((e) => e.k)
      .process({
        processElement(e, ctx) {
          ctx.timers.registerEventTimeTimer(e.ts + 1_000_000); // still pending when the shard is trimmed
        },
      })
      .sink('out');
    const stream = new MemoryStream(1, () => 0);
    const backend = new MemoryBackend();
    for (let i = 0; i < 10; i++)
      stream.put(`k${i}`, new TextEncoder().encode(JSON.stringify({ k: `k${i}`, ts: i })), 0);
    const job = {
      job: 'trim',
      plan: compile(p),
      source: stream,
      backend,
      sink: new MemorySink(),
      clock: () => 0,
    };
    await runJob(job, { untilIdle: true, roundPauseMs: 1, idlePollMs: 1 });
    const [p0] = (await stream.listShards()).map((s) => s.shardId);
    // An unfinished shard's checkpoint keeps its timers in its timer log.
    expect((await backend.readCheckpoint(p0!))?.timerLog).toBeDefined();
    stream.split(p0!);
    const listed = (await stream.listShards()).filter((s) => s.shardId !== p0); // the parent's retention ran out
    const source = { listShards: async () => listed };
    const inherited = [];
    for (const child of listed) {
      const start = await startOfShard({ source: source as never, backend }, child.shardId);
      inherited.push(...(start?.initial?.timers ?? []));
    }
    expect(inherited.map((t) => t.key).sort()).toEqual(Array.from({ length: 10 }, (_, i) => `k${i}`).sort());
    const round = await coordinateRound(
      { source: source as never, backend },
      { isLeaseLive: async () => false, startWorker: async () => {} },
    );
    expect(round.started).toEqual(listed.map((s) => s.shardId));
  });

  it('a child inherits its finished parent: the same checkpoint the coordinator computes', async () => {
    const source = new MemoryStream(1);
    const [p0] = (await source.listShards()).map((s) => s.shardId);
    const [c0, c1] = source.split(p0!);
    const backend = new MemoryBackend();
    const shards = await source.listShards();

    // The parent has not finished: the children may not run.
    expect(await startOfShard({ source, backend }, c0)).toBeUndefined();
    expect(await startOfShard({ source, backend }, p0!)).toEqual({ initial: undefined });
    expect(await startOfShard({ source, backend }, 'shardId-999')).toBeUndefined();

    const parent = finished(p0!, {
      watermark: 500,
      maxTimestamp: 5501,
      timers: [
        timer(keyIn(shards.find((s) => s.shardId === c0)!.hashKeyRange)),
        timer(keyIn(shards.find((s) => s.shardId === c1)!.hashKeyRange)),
      ],
    });
    const lease = await backend.acquireLease(p0!, 'w', 0, 1);
    await backend.commit(lease, { checkpoint: parent, mutations: [], outputs: [] });
    for (const child of [c0, c1]) {
      const start = await startOfShard({ source, backend }, child);
      const info = shards.find((s) => s.shardId === child)!;
      expect(start).toEqual({ initial: childCheckpoint(info, [parent], shards) });
      expect(start?.initial?.timers).toHaveLength(1);
    }
    // A finished shard does not run again (its outbox is the coordinator's concern).
    expect(await startOfShard({ source, backend }, p0!)).toBeUndefined();
  });
});
