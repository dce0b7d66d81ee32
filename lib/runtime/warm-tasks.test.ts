/**
 * Warm tasks: an invocation that finds its shard's checkpoint where the task it kept left it goes
 * on with that task (no state read again); any other commit in between, an error or a commit
 * that is still open makes the next invocation start from the stored checkpoint. Results are
 * those of invocations that each start cold.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import pageViews from '../../examples/page-views.ts';
import {
  type Commit,
  compile,
  type Lease,
  MemoryBackend,
  type Output,
  type PipelinePlan,
  pipeline,
  type StateAddress,
} from '../core/index.ts';
import { clickstream } from './clickstream.ts';
import type { JobRuntime } from './job.ts';
import { MemoryStream } from './testing/memory-stream.ts';
import { taskKeyLimit, WarmTasks } from './warm-tasks.ts';
import { DEFAULT_MAX_CACHED_KEYS, runShardWorker, type WorkerResult } from './worker.ts';

const T0 = Date.UTC(2026, 0, 2);
const plan: PipelinePlan = compile(pageViews);
const encoder = new TextEncoder();

/** One job over a 2-shard stream of page views, fed in stages; every state read is recorded. */
async function world(events = 2400) {
  // Arrival time = the clock: no shard is ever idle, so results depend on the records alone.
  const stream = new MemoryStream(2, () => T0);
  const views = [...clickstream({ events, pages: 60, users: 300, rate: 10, seed: 11 })];
  const shards = (await stream.listShards()).map((s) => s.shardId);
  const backend = new MemoryBackend();
  const reads: StateAddress[] = [];
  const published: Output[] = [];
  let put = 0;
  let failCommits = 0;
  const store = Object.create(backend) as MemoryBackend;
  store.getMany = (addresses) => {
    reads.push(...addresses);
    return backend.getMany(addresses);
  };
  store.commit = async (lease: Lease, commit: Commit) => {
    if (failCommits > 0) {
      failCommits--;
      throw new Error('commit failed');
    }
    await backend.commit(lease, commit);
  };
  const job: JobRuntime = {
    job: 'warm-test',
    plan,
    source: stream,
    backend: store,
    sink: {
      async publish(outputs) {
        published.push(...outputs);
      },
    },
    clock: () => T0,
  };
  return {
    shards,
    backend,
    reads,
    published,
    /** Puts the next `fraction` of the events. */
    feed(fraction: number) {
      const end = Math.min(views.length, put + Math.ceil(views.length * fraction));
      for (; put < end; put++) stream.put(views[put]!.page, encoder.encode(JSON.stringify(views[put])));
    },
    failNextCommit() {
      failCommits = 1;
    },
    run(shardId: string, warmTasks?: WarmTasks, batchSize = 100): Promise<WorkerResult> {
      return runShardWorker(job, shardId, {
        owner: `w-${Math.random()}`,
        batchSize,
        untilIdle: true,
        idlePollMs: 1,
        leaseTtlMs: 60_000,
        ...(warmTasks === undefined ? {} : { warmTasks }),
      });
    },
  };
}

/** An idempotent sink's view: output values by id. */
const byId = (outputs: readonly Output[]): Map<string, string> =>
  new Map(outputs.map((o) => [o.id, JSON.stringify(o.value)]));

const repeated = (addresses: readonly StateAddress[]): number => addresses.length - new Set(addresses).size;

describe('warm tasks', () => {
  it('an invocation goes on with the task its shard kept: no state is read again, outputs are exact', async () => {
    const warm = await world();
    const cold = await world();
    const tasks = new WarmTasks();
    const results: WorkerResult[] = [];
    for (let stage = 0; stage < 3; stage++) {
      warm.feed(1 / 3);
      cold.feed(1 / 3);
      for (const shard of warm.shards) {
        results.push(await warm.run(shard, tasks));
        expect((await cold.run(shard)).warm).toBe(false);
      }
    }
    // The first invocation of each shard starts cold; every later one goes on warm.
    expect(results.map((r) => r.warm)).toEqual([false, false, true, true, true, true]);
    expect(tasks.stats).toEqual({ hits: 4, stale: 0, tooLarge: 0, dropped: 0 });
    expect(tasks.size).toBe(2);
    expect(repeated(warm.reads), 'state entries read twice by the warm invocations').toBe(0);
    expect(repeated(cold.reads), 'cold invocations read state again').toBeGreaterThan(0);
    expect(warm.published.length).toBeGreaterThan(100);
    expect(byId(warm.published)).toEqual(byId(cold.published));
    expect(await warm.backend.unpublishedOutputs(warm.shards[0]!)).toEqual([]);
  });

  it("another owner's commit in between makes the kept task stale: the next invocation starts from the stored checkpoint", async () => {
    const w = await world();
    const reference = await world();
    const containerA = new WarmTasks();
    const containerB = new WarmTasks();
    const shard = w.shards[0]!;
    const order: Array<[WarmTasks, boolean]> = [
      [containerA, false], // A starts cold and keeps its task
      [containerB, false], // B takes over: A's task is now behind the stored checkpoint
      [containerA, false], // stale: A starts from the stored checkpoint
      [containerA, true], // and goes on warm after that
    ];
    for (const [container, warmExpected] of order) {
      w.feed(1 / 4);
      reference.feed(1 / 4);
      expect((await w.run(shard, container)).warm).toBe(warmExpected);
      await reference.run(shard);
    }
    expect(containerA.stats).toEqual({ hits: 1, stale: 1, tooLarge: 0, dropped: 0 });
    expect(byId(w.published)).toEqual(byId(reference.published));
  });

  it('keeps no task after a failed invocation, nor one caching more keys than allowed', async () => {
    const w = await world();
    const reference = await world();
    const tasks = new WarmTasks();
    const shard = w.shards[1]!;
    w.feed(0.5);
    reference.feed(0.5);
    w.failNextCommit();
    await expect(w.run(shard, tasks)).rejects.toThrow('commit failed');
    expect(tasks.size).toBe(0);
    expect((await w.run(shard, tasks)).warm).toBe(false);
    await reference.run(shard);
    expect(tasks.size).toBe(1);

    const small = new WarmTasks({ maxKeys: 5 });
    w.feed(0.5);
    reference.feed(0.5);
    expect((await w.run(shard, small)).warm).toBe(false);
    await reference.run(shard);
    expect(small.size).toBe(0);
    expect(small.stats.tooLarge).toBe(1);
    expect(byId(w.published)).toEqual(byId(reference.published));
  });

  it('keeps at most maxTotalKeys keys over all kept tasks, dropping the least recently kept', async () => {
    const w = await world();
    const reference = await world();
    w.feed(0.5);
    reference.feed(0.5);
    // Each shard's task caches about 30 of the 60 pages: measure them with an unbounded container.
    const probe = new WarmTasks();
    await w.run(w.shards[0]!, probe);
    const first = probe.cachedKeys;
    await w.run(w.shards[1]!, probe);
    const second = probe.cachedKeys - first;
    for (const shard of reference.shards) await reference.run(shard);
    expect(first).toBeGreaterThan(0);
    expect(second).toBeGreaterThan(0);

    // Room for either task, not both: keeping the second drops the first.
    const tasks = new WarmTasks({ maxTotalKeys: Math.max(first, second) + 1 });
    w.feed(0.25);
    reference.feed(0.25);
    expect((await w.run(w.shards[0]!, tasks)).warm).toBe(false);
    expect(tasks.size).toBe(1);
    expect((await w.run(w.shards[1]!, tasks)).warm).toBe(false);
    expect(tasks.size).toBe(1);
    for (const shard of reference.shards) await reference.run(shard);
    expect(tasks.stats.dropped).toBe(1);
    expect(tasks.cachedKeys).toBeLessThanOrEqual(Math.max(first, second) + 1);
    w.feed(0.25);
    reference.feed(0.25);
    // Shard 1 goes on with its kept task; shard 0's was dropped, so it reads its state again.
    expect((await w.run(w.shards[1]!, tasks)).warm).toBe(true);
    expect((await w.run(w.shards[0]!, tasks)).warm).toBe(false);
    await reference.run(reference.shards[1]!);
    await reference.run(reference.shards[0]!);
    expect(byId(w.published)).toEqual(byId(reference.published));

    expect(() => new WarmTasks({ maxTotalKeys: 0 })).toThrow(
      /maxTotalKeys must be a whole number >= 1; received 0/,
    );
    expect(() => new WarmTasks({ maxKeys: 1.5 })).toThrow(
      /maxKeys must be a whole number >= 1; received 1.5/,
    );
  });

  it('any schedule of invocations over warm containers gives the outputs of cold invocations', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.array(
          fc.record({
            fraction: fc.constantFrom(0.1, 0.25, 0.4),
            // Per shard: which container runs it (0-1 keep tasks, 2 never does), and its batch size.
            runs: fc.array(fc.tuple(fc.integer({ min: 0, max: 2 }), fc.integer({ min: 20, max: 300 })), {
              minLength: 2,
              maxLength: 2,
            }),
          }),
          { minLength: 2, maxLength: 6 },
        ),
        async (schedule) => {
          const w = await world(1200);
          const reference = await world(1200);
          const containers = [new WarmTasks(), new WarmTasks()];
          for (const step of schedule) {
            w.feed(step.fraction);
            reference.feed(step.fraction);
            for (const [i, [container, batchSize]] of step.runs.entries()) {
              const shard = w.shards[i]!;
              await w.run(shard, containers[container], batchSize);
              await reference.run(shard, undefined, batchSize);
            }
          }
          expect(byId(w.published)).toEqual(byId(reference.published));
        },
      ),
      { numRuns: 15, seed: 20261126 },
    );
  });
});

describe('taskKeyLimit', () => {
  it('allows maxCachedKeys per keyed operator', () => {
    const onePlan = compile(pageViews);
    expect(onePlan.operators).toHaveLength(1);
    expect(taskKeyLimit(onePlan)).toBe(DEFAULT_MAX_CACHED_KEYS);
    expect(taskKeyLimit(onePlan, 500_000)).toBe(500_000);

    const two = pipeline('two-operators');
    const events = two.source<{ k: string; n: number }>();
    events
      .keyBy((e) => e.k)
      .process({ processElement: (e, ctx) => ctx.emit(e.n) })
      .sink('a');
    events
      .keyBy((e) => e.k)
      .process({ processElement: (e, ctx) => ctx.emit(-e.n) })
      .sink('b');
    const twoPlan = compile(two);
    expect(twoPlan.operators).toHaveLength(2);
    expect(taskKeyLimit(twoPlan, 1_000)).toBe(2_000);
  });
});
