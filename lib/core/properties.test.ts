/**
 * Property tests of the engine's event-time semantics, through the TestDriver:
 * (a) restarts and batch boundaries never change results,
 * (b) in-order aligned windows equal a naive batch computation,
 * (c) watermarks never regress and follow max ts - bound - 1 (or an explicit advance),
 * (d) every element lands in each of its sliding windows exactly once.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import type { AggregateFunction } from './aggregates.ts';
import { collect } from './aggregates.ts';
import { DEAD_LETTER_SINK, type Pipeline, passthroughDeserializer, pipeline } from './dsl.ts';
import { listState, mapState, valueState } from './state.ts';
import { type DriverRecord, TestDriver } from './testing/test-driver.ts';
import { MAX_WATERMARK } from './time.ts';
import type { TimerLogOptions } from './timer-log.ts';
import { boundedOutOfOrderness } from './watermarks.ts';
import { session, sliding, tumbling, type WindowAssigner } from './windows.ts';

interface Ev {
  readonly k: string;
  /** null: a record whose timestamp cannot be extracted (dead letter). */
  readonly ts: number | null;
  readonly v: number;
  readonly id: number;
}

const KEYS = ['a', 'b', 'c', 'd', 'e', 'f'] as const;

// --- generators --------------------------------------------------------------------------

/** Mostly increasing timestamps with jitter: out-of-order and (with small bounds) late events. */
function eventsArb(options: { maxLength?: number; jitter?: number; minTs?: number } = {}) {
  const { maxLength = 40, jitter = 30, minTs = -20 } = options;
  return fc
    .array(
      fc.record({
        k: fc.constantFrom(...KEYS),
        dt: fc.integer({ min: 0, max: 6 }),
        jitter: fc.integer({ min: 0, max: jitter }),
        v: fc.integer({ min: 0, max: 20 }),
      }),
      { maxLength },
    )
    .map((raw) => {
      let base = minTs + jitter;
      return raw.map((r, id): Ev => {
        base += r.dt;
        return { k: r.k, ts: base - r.jitter, v: r.v, id };
      });
    });
}

/** Non-decreasing timestamps (possibly negative). */
function inOrderEventsArb(maxLength = 40) {
  return fc
    .array(
      fc.record({
        k: fc.constantFrom(...KEYS),
        dt: fc.integer({ min: 0, max: 7 }),
        v: fc.integer({ min: -5, max: 20 }),
      }),
      { maxLength },
    )
    .chain((raw) =>
      fc.integer({ min: -60, max: 60 }).map((start) => {
        let ts = start;
        return raw.map((r, id): Ev => {
          ts += r.dt;
          return { k: r.k, ts, v: r.v, id };
        });
      }),
    );
}

type Cut = 'none' | 'split' | 'restart';
const cutArb: fc.Arbitrary<Cut> = fc.constantFrom<Cut>('none', 'none', 'none', 'split', 'restart');

const assignerArb: fc.Arbitrary<WindowAssigner> = fc.oneof(
  fc
    .record({ size: fc.integer({ min: 1, max: 30 }), offset: fc.integer({ min: -29, max: 29 }) })
    .map(({ size, offset }) => tumbling({ size, offset: offset % size })),
  fc
    .record({
      size: fc.integer({ min: 1, max: 30 }),
      slide: fc.integer({ min: 1, max: 30 }),
      offset: fc.integer({ min: -29, max: 29 }),
    })
    .map(({ size, slide, offset }) => {
      const s = Math.min(slide, size);
      return sliding({ size, slide: s, offset: offset % s });
    }),
  fc.integer({ min: 1, max: 20 }).map((gap) => session({ gap })),
);

// --- pipelines ---------------------------------------------------------------------------

const source = (p: Pipeline, bound: number) =>
  p
    .source<Ev>({ deserializer: passthroughDeserializer<Ev>() })
    .withTimestamps((e) => e.ts as number, boundedOutOfOrderness(bound));

interface Acc {
  readonly n: number;
  readonly s: number;
  readonly ids: readonly number[];
}
const stats: AggregateFunction<Ev, Acc, Acc> = {
  create: () => ({ n: 0, s: 0, ids: [] }),
  add: (e, acc) => ({ n: acc.n + 1, s: acc.s + e.v, ids: [...acc.ids, e.id] }),
  merge: (a, b) => ({ n: a.n + b.n, s: a.s + b.s, ids: [...a.ids, ...b.ids] }),
  result: (acc) => acc,
};

/** `early`: early firings every so many ms, where the window kind and size allow them. */
function windowPipeline(assigner: WindowAssigner, bound: number, lateness: number, early?: number): Pipeline {
  const p = pipeline('prop-windows');
  const windowed = source(p, bound)
    .keyBy((e) => e.k)
    .window(assigner)
    .allowedLateness(lateness)
    .sideOutputLateData('late');
  if (early !== undefined && assigner.kind !== 'session' && early < assigner.size)
    windowed.earlyFiring(early);
  windowed
    .aggregate(stats, ({ key, window, result, early: isEarly }) => ({
      k: key,
      start: window.start,
      end: window.end,
      early: isEarly === true,
      ...result,
    }))
    .sink('windows');
  return p;
}

const earlyArb = fc.option(fc.integer({ min: 1, max: 9 }), { nil: undefined });

/** A keyed process function using value, list and map state and event-time timers. */
function processPipeline(bound: number): Pipeline {
  const p = pipeline('prop-process');
  source(p, bound)
    .keyBy((e) => e.k)
    .process({
      state: { count: valueState<number>(), items: listState<number>(), last: mapState<string, number>() },
      processElement(e: Ev, ctx) {
        const count = (ctx.state.count.value() ?? 0) + 1;
        ctx.state.count.update(count);
        ctx.state.items.add(e.v);
        ctx.state.last.put(`m${e.v % 3}`, e.id);
        const ts = ctx.timestamp;
        ctx.timers.registerEventTimeTimer(ts + (e.v % 7) * 3);
        ctx.timers.registerEventTimeTimer(ts + 10, 'ns');
        if (e.v % 4 === 0) ctx.timers.deleteEventTimeTimer(ts + 3);
        if (e.v % 5 === 0) ctx.output('side', { id: e.id, wm: ctx.currentWatermark });
        ctx.emit({ kind: 'element', id: e.id, k: ctx.key, count, wm: ctx.currentWatermark });
        // A failing element goes to the dead-letter sink; its state, timers and outputs roll back.
        if (e.v === 13) throw new Error(`element ${e.id} fails`);
      },
      onTimer(t, ctx) {
        const count = ctx.state.count.value() ?? 0;
        ctx.emit({
          kind: 'timer',
          k: ctx.key,
          time: t.time,
          ns: t.namespace,
          wm: ctx.currentWatermark,
          count,
          items: ctx.state.items.get(),
          last: ctx.state.last.entries(),
        });
        if (t.namespace === 'ns') ctx.state.items.clear();
        // A timer registered while firing, due now (same advance) or later.
        if (count % 3 === 0 && t.namespace !== 'again') {
          ctx.timers.registerEventTimeTimer(t.time + (count % 2) * 5, 'again');
        }
        if (count > 6) ctx.state.last.clear();
        // A failing timer goes to the dead-letter sink and is rolled back.
        if (count === 5 && t.namespace === 'ns') throw new Error(`timer ${t.time} of ${ctx.key} fails`);
      },
    })
    .sink('process');
  return p;
}

interface Basket {
  n: number;
  sum: number;
  ids: number[];
  fired: number;
}

/**
 * A process function in the style of many Flink jobs: it changes its state object in place,
 * writes it back and emits the object itself. Elements with v = 13 and some timers fail after
 * changing it: they must leave no trace.
 */
function inPlacePipeline(bound: number): Pipeline {
  const p = pipeline('prop-in-place');
  source(p, bound)
    .keyBy((e) => e.k)
    .process({
      state: { basket: valueState<Basket>(), items: listState<{ v: number }>() },
      processElement(e: Ev, ctx) {
        const basket = ctx.state.basket.value() ?? { n: 0, sum: 0, ids: [], fired: 0 };
        basket.n++;
        basket.ids.push(e.id);
        if (e.v === 13) throw new Error(`element ${e.id} fails`);
        basket.sum += e.v;
        ctx.state.basket.update(basket);
        ctx.state.items.add({ v: e.v });
        ctx.timers.registerEventTimeTimer(ctx.timestamp + (e.v % 4) * 2);
        ctx.emit(basket);
      },
      onTimer(t, ctx) {
        const basket = ctx.state.basket.value()!;
        basket.fired++;
        const items = ctx.state.items.get();
        if (items[0] !== undefined) items[0].v += 100; // in place, written back below
        if ((basket.n + t.time) % 5 === 0) throw new Error(`timer ${t.time} of ${ctx.key} fails`);
        ctx.state.basket.update(basket);
        ctx.state.items.update(items);
        ctx.emit({ basket, items });
      },
    })
    .sink('in-place');
  return p;
}

// --- driving -----------------------------------------------------------------------------

const toRecord = (e: Ev): DriverRecord => ({ partitionKey: e.k, data: e });

type Step =
  | { readonly type: 'send'; readonly events: readonly Ev[] }
  | { readonly type: 'restart' }
  | { readonly type: 'watermark'; readonly value: number };

/** Outputs grouped by sink, values only, in emission order. */
function bySink(driver: TestDriver): Record<string, unknown[]> {
  const out: Record<string, unknown[]> = {};
  for (const o of driver.outputs()) {
    const list = out[o.sink] ?? [];
    list.push(o.value);
    out[o.sink] = list;
  }
  return out;
}

async function run(
  p: Pipeline,
  shards: number,
  steps: readonly Step[],
  timerLog?: TimerLogOptions,
): Promise<Record<string, unknown[]>> {
  const driver = new TestDriver(p, { shards, ...(timerLog === undefined ? {} : { timerLog }) });
  for (const step of steps) {
    if (step.type === 'send') await driver.send(step.events.map(toRecord));
    else if (step.type === 'restart') driver.restart();
    else await driver.advanceWatermark(step.value);
  }
  await driver.advanceWatermark(MAX_WATERMARK);
  return bySink(driver);
}

/** The events cut into send() calls at 'split' and 'restart' cuts, restarting at the latter. */
function chunked(events: readonly Ev[], cuts: readonly Cut[], restartBeforeEnd: boolean): Step[] {
  const steps: Step[] = [];
  let chunk: Ev[] = [];
  events.forEach((e, i) => {
    chunk.push(e);
    const cut = cuts[i] ?? 'none';
    if (cut !== 'none') {
      steps.push({ type: 'send', events: chunk });
      chunk = [];
      if (cut === 'restart') steps.push({ type: 'restart' });
    }
  });
  if (chunk.length > 0) steps.push({ type: 'send', events: chunk });
  if (restartBeforeEnd) steps.push({ type: 'restart' });
  return steps;
}

const eventsWithCuts = (maxLength = 40) =>
  eventsArb({ maxLength }).chain((events) =>
    fc.record({
      events: fc.constant(events),
      cuts: fc.array(cutArb, { minLength: events.length, maxLength: events.length }),
      restartBeforeEnd: fc.boolean(),
    }),
  );

/** Steps interleaving sends, explicit watermark advances and (optional) restarts. */
const stepsArb = eventsArb({ maxLength: 30 }).chain((events) =>
  fc
    .array(
      fc.record({
        cut: cutArb,
        advance: fc.option(fc.integer({ min: -30, max: 200 }), { freq: 4 }),
      }),
      { minLength: events.length, maxLength: events.length },
    )
    .map((cuts) => {
      const steps: Step[] = [];
      let chunk: Ev[] = [];
      events.forEach((e, i) => {
        chunk.push(e);
        const { cut, advance } = cuts[i]!;
        if (cut !== 'none' || advance !== null) {
          steps.push({ type: 'send', events: chunk });
          chunk = [];
          if (advance !== null) steps.push({ type: 'watermark', value: advance });
          if (cut === 'restart') steps.push({ type: 'restart' });
        }
      });
      if (chunk.length > 0) steps.push({ type: 'send', events: chunk });
      return steps;
    }),
);

const withoutRestarts = (steps: readonly Step[]): Step[] => steps.filter((s) => s.type !== 'restart');

const shardsArb = fc.constantFrom(1, 3);
/** Tiny timer-log limits for the restarted run: chunks, their deletion and compaction all happen. */
const timerLogArb = fc.record({
  tailOps: fc.integer({ min: 1, max: 4 }),
  maxChunks: fc.integer({ min: 1, max: 4 }),
});
/** FLOE_PROPERTY_RUNS_SCALE=20 runs every property 20 times as often (a deeper local search). */
const SCALE = Number(process.env.FLOE_PROPERTY_RUNS_SCALE ?? 1);
const runs = (n: number): number => Math.max(1, Math.round(n * SCALE));
const NUM_RUNS = runs(150);

// --- (a) restart and batch-split equivalence ---------------------------------------------

describe('(a) restarts and batch boundaries do not change results', () => {
  it('windows (tumbling, sliding, session) with lateness, late data and early firings', async () => {
    await fc.assert(
      fc.asyncProperty(
        assignerArb,
        fc.integer({ min: 0, max: 8 }),
        fc.integer({ min: 0, max: 12 }),
        earlyArb,
        shardsArb,
        eventsWithCuts(),
        timerLogArb,
        async (assigner, bound, lateness, early, shards, { events, cuts, restartBeforeEnd }, timerLog) => {
          const p = windowPipeline(assigner, bound, lateness, early);
          const expected = await run(p, shards, [{ type: 'send', events }]);
          const actual = await run(p, shards, chunked(events, cuts, restartBeforeEnd), timerLog);
          expect(actual).toEqual(expected);
        },
      ),
      { numRuns: runs(300) },
    );
  });

  it('keyed process function with value/list/map state and event-time timers', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 8 }),
        shardsArb,
        eventsWithCuts(),
        timerLogArb,
        async (bound, shards, { events, cuts, restartBeforeEnd }, timerLog) => {
          const p = processPipeline(bound);
          const expected = await run(p, shards, [{ type: 'send', events }]);
          const actual = await run(p, shards, chunked(events, cuts, restartBeforeEnd), timerLog);
          expect(actual).toEqual(expected);
        },
      ),
      { numRuns: NUM_RUNS },
    );
  });

  it('a process function changing state objects in place, with failing elements and timers', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 8 }),
        shardsArb,
        eventsWithCuts(),
        async (bound, shards, { events, cuts, restartBeforeEnd }) => {
          const p = inPlacePipeline(bound);
          const expected = await run(p, shards, [{ type: 'send', events }]);
          const actual = await run(p, shards, chunked(events, cuts, restartBeforeEnd));
          expect(actual).toEqual(expected);
          // A failing element leaves no trace: the results equal a run without it (a
          // dead-lettered element does not move the watermark either).
          const without = await run(p, shards, [{ type: 'send', events: events.filter((e) => e.v !== 13) }]);
          const { [DEAD_LETTER_SINK]: dead = [], ...rest } = actual;
          const { [DEAD_LETTER_SINK]: deadWithout = [], ...restWithout } = without;
          expect(rest).toEqual(restWithout);
          expect(dead.length - deadWithout.length).toBe(events.filter((e) => e.v === 13).length);
        },
      ),
      { numRuns: NUM_RUNS },
    );
  });

  it('with explicit watermark advances between batches, restarts change nothing', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.oneof(
          fc.constant<'process'>('process'),
          assignerArb.map((a) => a),
        ),
        fc.integer({ min: 0, max: 8 }),
        fc.integer({ min: 0, max: 12 }),
        earlyArb,
        shardsArb,
        stepsArb,
        timerLogArb,
        async (kind, bound, lateness, early, shards, steps, timerLog) => {
          const p =
            kind === 'process' ? processPipeline(bound) : windowPipeline(kind, bound, lateness, early);
          const expected = await run(p, shards, withoutRestarts(steps));
          const actual = await run(p, shards, steps, timerLog);
          expect(actual).toEqual(expected);
        },
      ),
      { numRuns: NUM_RUNS },
    );
  });
});

// --- (b) in-order windows equal a naive batch computation ---------------------------------

/** Positive modulo. */
const mod = (a: number, n: number): number => ((a % n) + n) % n;

/** Window starts containing ts, by brute force: start ≡ offset (mod slide), start ≤ ts < start + size. */
function naiveStarts(ts: number, size: number, slide: number, offset: number): number[] {
  const starts: number[] = [];
  for (let s = ts - size + 1; s <= ts; s++) if (mod(s - offset, slide) === 0) starts.push(s);
  return starts;
}

interface Row {
  readonly k: string;
  readonly start: number;
  readonly end: number;
  readonly n: number;
  readonly s: number;
}
const rowOrder = (a: Row, b: Row): number => (a.k < b.k ? -1 : a.k > b.k ? 1 : a.start - b.start);

function naiveAggregate(events: readonly Ev[], size: number, slide: number, offset: number): Row[] {
  const groups = new Map<string, Row>();
  for (const e of events) {
    for (const start of naiveStarts(e.ts as number, size, slide, offset)) {
      const id = `${e.k}@${start}`;
      const row = groups.get(id) ?? { k: e.k, start, end: start + size, n: 0, s: 0 };
      groups.set(id, { ...row, n: row.n + 1, s: row.s + e.v });
    }
  }
  return [...groups.values()].sort(rowOrder);
}

describe('(b) in-order input: windows equal a naive batch computation', () => {
  it('tumbling and sliding count/sum', async () => {
    const aligned = fc.oneof(
      fc
        .record({ size: fc.integer({ min: 1, max: 25 }), offset: fc.integer({ min: -24, max: 24 }) })
        .map(({ size, offset }) => ({ size, slide: size, offset: offset % size, tumbling: true })),
      fc
        .record({
          size: fc.integer({ min: 1, max: 25 }),
          slide: fc.integer({ min: 1, max: 25 }),
          offset: fc.integer({ min: -24, max: 24 }),
        })
        .map(({ size, slide, offset }) => {
          const s = Math.min(size, slide);
          return { size, slide: s, offset: offset % s, tumbling: false };
        }),
    );
    await fc.assert(
      fc.asyncProperty(
        aligned,
        fc.integer({ min: 0, max: 10 }),
        fc.integer({ min: 0, max: 10 }),
        shardsArb,
        inOrderEventsArb(),
        fc.boolean(),
        async (w, bound, lateness, shards, events, finalInfinity) => {
          const assigner = w.tumbling
            ? tumbling({ size: w.size, offset: w.offset })
            : sliding({ size: w.size, slide: w.slide, offset: w.offset });
          const p = pipeline('prop-naive');
          source(p, bound)
            .keyBy((e) => e.k)
            .window(assigner)
            .allowedLateness(lateness)
            .aggregate(stats, ({ key, window, result }) => ({
              k: key,
              start: window.start,
              end: window.end,
              n: result.n,
              s: result.s,
            }))
            .sink('rows');
          const driver = new TestDriver(p, { shards });
          await driver.send(events.map(toRecord));
          await driver.advanceWatermark(finalInfinity ? MAX_WATERMARK : 1_000_000);
          const actual = driver.values<Row>('rows').sort(rowOrder);
          expect(actual).toEqual(naiveAggregate(events, w.size, w.slide, w.offset));
          expect(driver.values('floe.late')).toEqual([]);
        },
      ),
      { numRuns: runs(200) },
    );
  });
});

// --- (c) watermarks ----------------------------------------------------------------------

describe('(c) watermarks never regress', () => {
  it('after every step each shard watermark is max(max ts - bound - 1, advanced) and never decreases', async () => {
    const SHARDS = 3;
    const stepArb = fc.oneof(
      {
        weight: 5,
        arbitrary: fc
          .array(
            fc.record({
              shard: fc.integer({ min: 0, max: SHARDS - 1 }),
              ts: fc.option(fc.integer({ min: -50, max: 150 }), { freq: 8 }),
              k: fc.constantFrom(...KEYS),
            }),
            { minLength: 1, maxLength: 6 },
          )
          .map((records) => ({ type: 'send' as const, records })),
      },
      {
        weight: 2,
        arbitrary: fc
          .record({
            value: fc.integer({ min: -60, max: 200 }),
            shard: fc.option(fc.integer({ min: 0, max: SHARDS - 1 })),
          })
          .map((a) => ({ type: 'watermark' as const, ...a })),
      },
      { weight: 1, arbitrary: fc.constant({ type: 'restart' as const }) },
    );
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 0, max: 10 }),
        fc.array(stepArb, { maxLength: 20 }),
        async (bound, steps) => {
          const p = windowPipeline(tumbling({ size: 10 }), bound, 3);
          const driver = new TestDriver(p, { shards: SHARDS });
          const ids = driver.shardIds;
          const expected = ids.map(() => Number.NEGATIVE_INFINITY);
          const previous = ids.map(() => Number.NEGATIVE_INFINITY);
          let id = 0;
          for (const step of steps) {
            if (step.type === 'send') {
              await driver.send(
                step.records.map((r) => ({
                  partitionKey: r.k,
                  shard: ids[r.shard]!,
                  data: { k: r.k, ts: r.ts, v: 1, id: id++ } satisfies Ev,
                })),
              );
              for (const r of step.records) {
                if (r.ts !== null) expected[r.shard] = Math.max(expected[r.shard]!, r.ts - bound - 1);
              }
            } else if (step.type === 'watermark') {
              await driver.advanceWatermark(step.value, step.shard === null ? undefined : ids[step.shard]);
              for (let s = 0; s < ids.length; s++) {
                if (step.shard === null || step.shard === s) expected[s] = Math.max(expected[s]!, step.value);
              }
            } else {
              driver.restart();
            }
            for (let s = 0; s < ids.length; s++) {
              const wm = await driver.watermark(ids[s]!);
              expect(wm).toBeGreaterThanOrEqual(previous[s]!);
              expect(wm).toBe(expected[s]);
              previous[s] = wm;
            }
          }
          // Records without a timestamp went to the dead-letter sink, not into the watermark.
          const invalid = steps
            .flatMap((s) => (s.type === 'send' ? s.records : []))
            .filter((r) => r.ts === null);
          expect(driver.values('floe.dead-letter')).toHaveLength(invalid.length);
        },
      ),
      { numRuns: NUM_RUNS },
    );
  });
});

// --- (d) sliding windows: each element in each of its windows exactly once -----------------

/** For every element id, the sorted starts of the fired windows containing it. */
async function slidingMembership(
  events: readonly Ev[],
  size: number,
  slide: number,
  offset: number,
  shards: number,
): Promise<{ membership: Map<number, number[]>; duplicatesInAWindow: number }> {
  const p = pipeline('prop-sliding-collect');
  source(p, 0)
    .keyBy((e) => e.k)
    .window(sliding({ size, slide, offset }))
    .aggregate(collect<Ev>(), ({ key, window, result }) => ({
      k: key,
      start: window.start,
      ids: result.map((e) => e.id),
    }))
    .sink('windows');
  const driver = new TestDriver(p, { shards });
  await driver.send(events.map(toRecord));
  await driver.advanceWatermark(MAX_WATERMARK);
  expect(driver.values('floe.late')).toEqual([]);
  const membership = new Map<number, number[]>(events.map((e) => [e.id, []]));
  let duplicatesInAWindow = 0;
  for (const w of driver.values<{ k: string; start: number; ids: number[] }>('windows')) {
    if (new Set(w.ids).size !== w.ids.length) duplicatesInAWindow++;
    for (const id of w.ids) membership.get(id)!.push(w.start);
  }
  for (const starts of membership.values()) starts.sort((a, b) => a - b);
  return { membership, duplicatesInAWindow };
}

describe('(d) every element lands in its sliding windows exactly once', () => {
  it('size a multiple of slide: each element is in exactly size/slide = ceil(size/slide) windows', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 12 }),
        fc.integer({ min: 1, max: 5 }),
        fc.integer({ min: -11, max: 11 }),
        shardsArb,
        inOrderEventsArb(30),
        async (slide, factor, offset, shards, events) => {
          const size = slide * factor;
          const { membership, duplicatesInAWindow } = await slidingMembership(
            events,
            size,
            slide,
            offset % slide,
            shards,
          );
          expect(duplicatesInAWindow).toBe(0);
          for (const e of events) {
            const starts = membership.get(e.id)!;
            expect(starts).toHaveLength(Math.ceil(size / slide));
            expect(starts).toEqual(naiveStarts(e.ts as number, size, slide, offset % slide));
          }
        },
      ),
      { numRuns: NUM_RUNS },
    );
  });

  it('any size and slide: each element is in exactly the windows containing its timestamp', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.integer({ min: 1, max: 25 }),
        fc.integer({ min: 1, max: 25 }),
        fc.integer({ min: -24, max: 24 }),
        shardsArb,
        inOrderEventsArb(30),
        async (size, slideRaw, offsetRaw, shards, events) => {
          const slide = Math.min(size, slideRaw);
          const offset = offsetRaw % slide;
          const { membership, duplicatesInAWindow } = await slidingMembership(
            events,
            size,
            slide,
            offset,
            shards,
          );
          expect(duplicatesInAWindow).toBe(0);
          for (const e of events) {
            const starts = membership.get(e.id)!;
            // Not always ceil(size/slide) when slide does not divide size: floor or ceil.
            expect(starts.length).toBeGreaterThanOrEqual(Math.floor(size / slide));
            expect(starts.length).toBeLessThanOrEqual(Math.ceil(size / slide));
            expect(starts).toEqual(naiveStarts(e.ts as number, size, slide, offset));
          }
        },
      ),
      { numRuns: NUM_RUNS },
    );
  });
});
