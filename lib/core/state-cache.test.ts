/**
 * A bounded state cache (ShardTaskOptions.maxCachedKeys): dropping keys after a commit and
 * reading them back when a batch or a timer needs them never changes results.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { count, sum } from './aggregates.ts';
import { compile, type PipelinePlan } from './compile.ts';
import { pipeline } from './dsl.ts';
import { PipelineDefinitionError } from './errors.ts';
import { Journal } from './journal.ts';
import { MemoryBackend } from './memory-backend.ts';
import type { SourceRecord } from './ports.ts';
import { processFunction } from './processor.ts';
import { ShardTask } from './shard-task.ts';
import { KeyedStateBackend, type MapState, mapState, valueState } from './state.ts';
import { MAX_WATERMARK } from './time.ts';
import { boundedOutOfOrderness, withIdleness } from './watermarks.ts';
import { session, sliding, tumbling } from './windows.ts';

interface Ev {
  readonly k: string;
  readonly ts: number;
  readonly v: number;
}

const SHARD = 'shard-0';

/** A backend with one 'by-map-key' map state, as the aligned window operators have. */
function windowTable(): { backend: KeyedStateBackend; w: MapState<number, number> } {
  const backend = new KeyedStateBackend(
    'op',
    { w: mapState<number, number>({ layout: 'by-map-key' }) },
    new Journal(),
  );
  const w = backend.handles<{ w: ReturnType<typeof mapState<number, number>> }>().w as MapState<
    number,
    number
  >;
  return { backend, w };
}

/** A pipeline's keyed stream of `Ev` by `k` (bounded out-of-orderness 3, idle after `idleMs`). */
function keyedEvents(name: string, idleMs?: number) {
  const p = pipeline(name);
  const bounded = boundedOutOfOrderness(3);
  const stream = p
    .source<Ev>({ deserializer: (d) => d as Ev })
    .withTimestamps((e) => e.ts, idleMs === undefined ? bounded : withIdleness(bounded, idleMs))
    .keyBy((e) => e.k);
  return { p, stream };
}

/** Each kind of keyed state: a shared window table, per-key session maps, a process function's value and map state with both timer domains. */
const plans: Record<string, () => PipelinePlan> = {
  'tumbling windows with lateness': () => {
    const { p, stream } = keyedEvents('cache-tumbling');
    stream
      .window(tumbling({ size: 10 }))
      .allowedLateness(5)
      .aggregate(count())
      .sink('out');
    return compile(p);
  },
  'sliding windows': () => {
    const { p, stream } = keyedEvents('cache-sliding');
    stream
      .window(sliding({ size: 12, slide: 4 }))
      .aggregate(sum((e: Ev) => e.v))
      .sink('out');
    return compile(p);
  },
  'session windows, with idleness': () => {
    const { p, stream } = keyedEvents('cache-session', 50);
    stream
      .window(session({ gap: 6 }))
      .aggregate(count())
      .sink('out');
    return compile(p);
  },
  'a process function with value and map state and timers': () => {
    const { p, stream } = keyedEvents('cache-process');
    stream
      .process(
        processFunction<Ev, string>()({
          state: { total: valueState<number>(), seen: mapState<number, number>() },
          processElement(e, ctx) {
            const total = (ctx.state.total.value() ?? 0) + e.v;
            ctx.state.total.update(total);
            ctx.state.seen.put(e.ts, e.v);
            ctx.timers.registerEventTimeTimer(e.ts + 8);
            ctx.timers.registerProcessingTimeTimer(ctx.currentProcessingTime + 3);
          },
          onTimer(timer, ctx) {
            const seen = ctx.state.seen.entries().length;
            ctx.emit(
              `${ctx.key}@${timer.time}/${timer.domain}: total ${ctx.state.total.value()} seen ${seen}`,
            );
            if (timer.domain === 'event') ctx.state.seen.clear();
          },
        }),
      )
      .sink('out');
    return compile(p);
  },
};

/** `n` events over `keys` keys, time moving 1 ms per event with up to 4 ms of disorder. */
function events(n: number, keys: number, seed: number): Ev[] {
  let s = seed;
  const next = (): number => {
    s = (Math.imul(s, 1103515245) + 12345) >>> 0;
    return s / 2 ** 32;
  };
  return Array.from({ length: n }, (_, i) => ({
    k: `k${Math.floor(next() * keys)}`,
    ts: i - Math.floor(next() * 5),
    v: Math.floor(next() * 10),
  }));
}

function batchesOf(evs: readonly Ev[], sizes: readonly number[]): SourceRecord[][] {
  const out: SourceRecord[][] = [];
  let i = 0;
  for (let b = 0; i < evs.length; b++) {
    const size = Math.max(1, sizes[b % sizes.length]!);
    out.push(
      evs.slice(i, i + size).map((e, j) => ({
        data: e,
        partitionKey: e.k,
        sequenceNumber: String(i + j + 1).padStart(6, '0'),
        arrivalTime: 1_000 + i + j,
      })),
    );
    i += size;
  }
  return out;
}

interface Run {
  /** Every committed output, as id -> JSON value. */
  readonly outputs: Map<string, string>;
  /** Keys read from the store. */
  readonly reads: number;
  /** Most keys cached by any operator right after a commit. */
  readonly maxCached: number;
}

/** Runs the batches, committing each, then advances the watermark to the end. */
async function run(
  plan: PipelinePlan,
  batches: readonly SourceRecord[][],
  maxCachedKeys?: number,
): Promise<Run> {
  const backend = new MemoryBackend();
  const task = new ShardTask(plan, SHARD, maxCachedKeys === undefined ? {} : { maxCachedKeys });
  const lease = await backend.acquireLease(SHARD, 'test', 0, 1e12);
  const outputs = new Map<string, string>();
  let maxCached = 0;
  const commit = async (r: Awaited<ReturnType<ShardTask['processBatch']>>): Promise<void> => {
    maxCached = Math.max(maxCached, task.cachedKeys);
    if (!r.changed) return;
    await backend.commit(lease, r);
    for (const o of r.outputs) outputs.set(o.id, JSON.stringify(o.value));
  };
  let now = 0;
  for (const batch of batches) {
    now = batch[batch.length - 1]!.arrivalTime;
    await commit(await task.processBatch(batch, backend, now));
  }
  // Caught up for a while (an idleness advance fires timers), then the end of input.
  await commit(await task.processBatch([], backend, now + 1_000));
  await commit(await task.processWatermark(MAX_WATERMARK, backend, now + 2_000));
  return { outputs, reads: backend.reads.entries, maxCached };
}

describe('bounded state cache (maxCachedKeys)', () => {
  for (const [name, plan] of Object.entries(plans)) {
    it(`${name}: the same outputs with 4 cached keys as with all 40, reading dropped keys again`, async () => {
      const p = plan();
      const batches = batchesOf(events(600, 40, 7), [7, 13, 1, 30]);
      const all = await run(p, batches);
      const bounded = await run(p, batches, 4);
      expect(bounded.outputs).toEqual(all.outputs);
      expect(all.outputs.size).toBeGreaterThan(20);
      expect(all.maxCached).toBe(40);
      expect(bounded.maxCached).toBeLessThanOrEqual(4);
      expect(bounded.reads).toBeGreaterThan(all.reads);
    });
  }

  it('property: any limit and any batch sizes give the outputs of an unbounded cache', async () => {
    const compiled = Object.fromEntries(Object.entries(plans).map(([n, p]) => [n, p()]));
    await fc.assert(
      fc.asyncProperty(
        fc.constantFrom(...Object.keys(plans)),
        fc.integer({ min: 1, max: 12 }),
        fc.array(fc.integer({ min: 1, max: 25 }), { minLength: 1, maxLength: 6 }),
        fc.integer({ min: 1, max: 2 ** 31 }),
        async (name, limit, sizes, seed) => {
          const p = compiled[name]!;
          const batches = batchesOf(events(150, 15, seed), sizes);
          const bounded = await run(p, batches, limit);
          expect(bounded.outputs).toEqual((await run(p, batches)).outputs);
          expect(bounded.maxCached).toBeLessThanOrEqual(limit);
        },
      ),
      { numRuns: 60 },
    );
  });

  it('drops an evicted key from a shared window table too, least recently used keys first', () => {
    const { backend, w } = windowTable();
    for (const key of ['a', 'b', 'c', 'd']) {
      backend.setCurrentKey(key);
      w.put(0, 1);
      w.put(10, 2);
    }
    backend.takeMutations();
    expect(backend.evict(4)).toBe(0); // at the limit: nothing to do
    // Over 3: every key was used since it was cached, so the sweep spares each once, then drops
    // the longest cached down to 3/4 of the limit.
    expect(backend.evict(3)).toBe(2);
    expect([...backend.cache.keys()]).toEqual(['c', 'd']);
    backend.setCurrentKey('c'); // used again
    backend.setCurrentKey('e'); // new
    backend.takeMutations();
    // 'd' was not used since the last sweep: it goes first; then the longest cached, 'c'.
    expect(backend.evict(2)).toBe(2);
    expect([...backend.cache.keys()]).toEqual(['e']);
    for (const key of ['a', 'b', 'c', 'd']) {
      // Not read back from the store: a key whose rows stayed in memory would still see them.
      backend.setCurrentKey(key);
      expect(w.get(0)).toBeUndefined();
      expect(w.get(10)).toBeUndefined();
    }
  });

  it("gives a dropped key's table slot to a new key with none of its rows, and reads the dropped key back intact", () => {
    const { backend, w } = windowTable();
    const keys = Array.from({ length: 40 }, (_, i) => `k${i}`);
    for (const [i, key] of keys.entries()) {
      backend.setCurrentKey(key);
      w.put(0, i);
      if (i % 2 === 0) w.put(10, -i - 1);
    }
    const stored = new Map(backend.takeMutations().map((m) => [m.address, m.value]));
    // Keeps the 6 most recently cached keys, so both windows' tables stay.
    expect(backend.evict(8)).toBe(34);
    // New keys take the freed slots: they start empty and write only their own rows.
    for (const [i, key] of ['n0', 'n1', 'n2'].entries()) {
      backend.setCurrentKey(key);
      expect(w.get(0)).toBeUndefined();
      expect(w.get(10)).toBeUndefined();
      expect(w.entries()).toEqual([]);
      w.put(10, 100 + i);
    }
    expect(backend.takeMutations().map((m) => m.value)).toEqual(
      ['n0', 'n1', 'n2'].map((k, i) => `{"k":"${k}","s":{"w":[[10,${100 + i}]]}}`),
    );
    // Dropped keys read back from their stored form have exactly their rows.
    for (const [i, key] of keys.entries()) {
      backend.load(key, stored.get(backend.address(key)) ?? undefined);
      backend.setCurrentKey(key);
      expect(w.entries()).toEqual(
        i % 2 === 0
          ? [
              [0, i],
              [10, -i - 1],
            ]
          : [[0, i]],
      );
    }
  });

  it('rejects a limit that is not a whole number >= 1', () => {
    const p = plans['tumbling windows with lateness']!();
    for (const bad of [0, -1, 1.5, Number.NaN]) {
      expect(() => new ShardTask(p, SHARD, { maxCachedKeys: bad })).toThrow(PipelineDefinitionError);
    }
    expect(() => new ShardTask(p, SHARD, { maxCachedKeys: 0 })).toThrow(
      /maxCachedKeys must be a whole number >= 1; received 0/,
    );
  });
});
