/**
 * Model-based property tests of the window operators: floe, driven through the TestDriver with
 * random out-of-order input, explicit watermark advances, batch boundaries and restarts, must
 * emit exactly what the reference model of Flink's WindowOperator + EventTimeTrigger
 * (testing/window-model.ts) emits, in the same order: window results (key, start, end, result,
 * early flag) and late side-output elements, step by step.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { type AggregateFunction, collect, sum } from './aggregates.ts';
import { DEAD_LETTER_SINK, type Pipeline, passthroughDeserializer, pipeline } from './dsl.ts';
import { TestDriver } from './testing/test-driver.ts';
import {
  emptyCoverage,
  type ModelAssigner,
  type ModelCoverage,
  type ModelKey,
  type ModelOutput,
  WindowModel,
} from './testing/window-model.ts';
import { MAX_EVENT_TIME, MAX_WATERMARK } from './time.ts';
import { boundedOutOfOrderness } from './watermarks.ts';
import type { WindowResult } from './window-operator.ts';
import { session, sliding, tumbling, type WindowAssigner } from './windows.ts';

interface Ev {
  readonly k: ModelKey;
  readonly ts: number;
  readonly v: number;
  readonly id: number;
}

/** Number keys order before string keys, numerically (10 after 2). */
const KEYS: readonly ModelKey[] = ['a', 'b', 'c', 2, 10];

/** collect(), sum(), an aggregate whose result is sometimes null, and reduce(). */
type AggKind = 'collect' | 'sum' | 'sparse' | 'reduce';

interface Config {
  readonly assigner: ModelAssigner;
  readonly lateness: number;
  readonly bound: number;
  readonly early: number | undefined;
  readonly agg: AggKind;
  /** Without a window function: the output is floe's { key, window, result, early? }. */
  readonly plain: boolean;
}

type Step =
  | { readonly type: 'send'; readonly events: readonly Ev[] }
  | { readonly type: 'watermark'; readonly value: number }
  | { readonly type: 'restart' };

// --- generators --------------------------------------------------------------------------

/** Mostly near 0 (either side); sometimes anywhere a Date reaches (±8.64e15 ms, with room). */
const smallOriginArb = fc.integer({ min: -90, max: 30 });
const originArb = fc.oneof(
  { weight: 6, arbitrary: smallOriginArb },
  { weight: 1, arbitrary: fc.integer({ min: -8.64e15 + 50, max: 8.64e15 - 250 }) },
);

/**
 * Mostly increasing timestamps from a random (often negative) origin, with jitter and now and
 * then a much older element: out-of-order, late within the allowed lateness, and too late.
 */
const eventsArb = (origins: fc.Arbitrary<number>) =>
  fc
    .tuple(origins, fc.subarray([...KEYS], { minLength: 1 }))
    .chain(([origin, keys]) =>
      fc.tuple(
        fc.constant(origin),
        fc.array(
          fc.record({
            k: fc.constantFrom(...keys),
            dt: fc.integer({ min: 0, max: 6 }),
            back: fc.oneof(
              { weight: 4, arbitrary: fc.integer({ min: 0, max: 8 }) },
              { weight: 2, arbitrary: fc.integer({ min: 4, max: 20 }) },
              { weight: 1, arbitrary: fc.integer({ min: 0, max: 40 }) },
            ),
            v: fc.integer({ min: -5, max: 20 }),
          }),
          { maxLength: 30, size: 'max' },
        ),
      ),
    )
    .map(([origin, raw]) => {
      let base = origin;
      return raw.map((r, id): Ev => {
        base += r.dt;
        return { k: r.k, ts: base - r.back, v: r.v, id };
      });
    });

/** The events cut into batches, with explicit watermark advances and restarts between them. */
const stepsArb = (origins: fc.Arbitrary<number> = originArb): fc.Arbitrary<Step[]> =>
  eventsArb(origins).chain((events) =>
    fc
      .array(
        fc.record({
          cut: fc.constantFrom('none', 'none', 'none', 'split', 'restart'),
          // Relative to the element's timestamp: mostly ahead of the generated watermark.
          advance: fc.option(fc.integer({ min: -10, max: 20 }), { freq: 6 }),
        }),
        { minLength: events.length, maxLength: events.length },
      )
      .map((cuts) => {
        const steps: Step[] = [];
        let chunk: Ev[] = [];
        events.forEach((e, i) => {
          chunk.push(e);
          const { cut, advance } = cuts[i]!;
          if (cut === 'none' && advance === null) return;
          steps.push({ type: 'send', events: chunk });
          chunk = [];
          if (advance !== null) steps.push({ type: 'watermark', value: e.ts + advance });
          if (cut === 'restart') steps.push({ type: 'restart' });
        });
        if (chunk.length > 0) steps.push({ type: 'send', events: chunk });
        return steps;
      }),
  );

const latenessArb = fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 15 }));
const boundArb = fc.integer({ min: 0, max: 8 });
const aggArb = fc.constantFrom<AggKind>('collect', 'sum', 'sparse', 'reduce');

const alignedArb: fc.Arbitrary<ModelAssigner> = fc.oneof(
  fc
    .record({ size: fc.integer({ min: 1, max: 30 }), offset: fc.integer({ min: -29, max: 29 }) })
    .map(({ size, offset }) => ({ kind: 'tumbling' as const, size, offset: offset % size })),
  // Mostly slide <= size; sometimes slide > size, leaving gaps that belong to no window.
  fc
    .record({
      size: fc.integer({ min: 1, max: 30 }),
      slide: fc.integer({ min: 1, max: 30 }),
      wide: fc.boolean(),
      offset: fc.integer({ min: -34, max: 34 }),
    })
    .map(({ size, slide, wide, offset }) => {
      const s = wide ? slide + Math.floor(slide / 4) : Math.min(slide, size);
      return { kind: 'sliding' as const, size, slide: s, offset: offset % s };
    }),
);

const alignedConfigArb: fc.Arbitrary<Config> = fc
  .record({
    assigner: alignedArb,
    lateness: latenessArb,
    bound: boundArb,
    agg: aggArb,
    plain: fc.boolean(),
    early: fc.option(fc.integer({ min: 1, max: 29 }), { nil: undefined, freq: 2 }),
  })
  .map((c) => ({
    ...c,
    // An interval not shorter than the window is refused.
    early:
      c.early !== undefined && c.assigner.kind !== 'session' && c.early < c.assigner.size
        ? c.early
        : undefined,
  }));

const sessionConfigArb: fc.Arbitrary<Config> = fc.record({
  assigner: fc.integer({ min: 1, max: 8 }).map((gap) => ({ kind: 'session' as const, gap })),
  lateness: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 30 })),
  bound: fc.integer({ min: 0, max: 20 }),
  agg: aggArb,
  plain: fc.boolean(),
  early: fc.constant(undefined),
});

/**
 * Scales a generated case to extreme magnitudes: every duration and time times `scale`
 * (durations up to 1e14 ms), shifted by `origin` (timestamps up to ±8.6e15 ms), each timestamp
 * and explicit watermark moved by -1, 0 or 1 ms so that the last-millisecond boundaries still
 * matter. Every value stays an exact integer, so the semantics must not change.
 */
const hugeArb = fc
  .record({
    // The longest generated duration is 37 (a wide slide): 37 * 2.7e12 < 1e14.
    scale: fc.integer({ min: 1e11, max: 2.7e12 }),
    // Where the scaled case lies: its latest timestamp at the highest a Date allows, its earliest
    // at the lowest, or anywhere between.
    place: fc.oneof(fc.constantFrom('top', 'bottom'), fc.integer({ min: -1000, max: 1000 })),
    wiggles: fc.array(fc.integer({ min: -1, max: 1 }), { minLength: 64, maxLength: 64 }),
    config: fc.oneof(alignedConfigArb, sessionConfigArb),
    steps: stepsArb(smallOriginArb),
  })
  .map(({ scale, place, wiggles, config, steps }): [Config, Step[]] => {
    const stamps = steps.flatMap((s) => (s.type === 'send' ? s.events.map((e) => e.ts) : []));
    const lowest = Math.min(0, ...stamps);
    const highest = Math.max(0, ...stamps);
    const origin =
      place === 'top'
        ? MAX_EVENT_TIME - 1 - highest * scale
        : place === 'bottom'
          ? -MAX_EVENT_TIME + 1 - lowest * scale
          : Math.round((place / 1000) * (MAX_EVENT_TIME - 1 - 220 * scale)); // |ts| <= 210 before scaling
    const a = config.assigner;
    const assigner: ModelAssigner =
      a.kind === 'session'
        ? { kind: 'session', gap: a.gap * scale }
        : a.kind === 'tumbling'
          ? { kind: 'tumbling', size: a.size * scale, offset: a.offset * scale }
          : { kind: 'sliding', size: a.size * scale, slide: a.slide * scale, offset: a.offset * scale };
    const time = (t: number, i: number): number => origin + t * scale + (wiggles[i % 64] ?? 0);
    let n = 0;
    return [
      {
        ...config,
        assigner,
        lateness: config.lateness * scale,
        bound: config.bound * scale,
        early: config.early === undefined ? undefined : config.early * scale,
      },
      steps.map((step): Step => {
        if (step.type === 'send')
          return { ...step, events: step.events.map((e) => ({ ...e, ts: time(e.ts, e.id) })) };
        if (step.type === 'watermark') return { ...step, value: time(step.value, n++ + 7) };
        return step;
      }),
    ];
  });

// --- floe and the model ------------------------------------------------------------------

/** Sum of v, emitted only for windows of two or more elements (null: nothing is emitted). */
const sparse: AggregateFunction<Ev, [number, number], number | null> = {
  create: () => [0, 0],
  add: (e, [n, s]) => [n + 1, s + e.v],
  merge: (a, b) => [a[0] + b[0], a[1] + b[1]],
  result: ([n, s]) => (n >= 2 ? s : null),
};

/** Keeps the element with the highest v, the first of equals (associative, as merging needs). */
const highest = (a: Ev, b: Ev): Ev => (b.v > a.v ? b : a);

function modelResult(agg: AggKind, contents: readonly Ev[]): unknown {
  const total = contents.reduce((s, e) => s + e.v, 0);
  if (agg === 'collect') return contents;
  if (agg === 'sum') return total;
  if (agg === 'reduce') return contents.reduce(highest);
  return contents.length >= 2 ? total : null;
}

function floeAssigner(a: ModelAssigner): WindowAssigner {
  if (a.kind === 'tumbling') return tumbling({ size: a.size, offset: a.offset });
  if (a.kind === 'sliding') return sliding({ size: a.size, slide: a.slide, offset: a.offset });
  return session({ gap: a.gap });
}

function floePipeline(c: Config): Pipeline {
  const p = pipeline('window-model');
  const windowed = p
    .source<Ev>({ deserializer: passthroughDeserializer<Ev>() })
    .withTimestamps((e) => e.ts, boundedOutOfOrderness(c.bound))
    .keyBy((e) => e.k)
    .window(floeAssigner(c.assigner))
    .allowedLateness(c.lateness)
    .sideOutputLateData('late');
  if (c.early !== undefined) windowed.earlyFiring(c.early);
  const windowFunction = ({ key, window, result, early }: WindowResult<ModelKey, unknown>) => ({
    k: key,
    start: window.start,
    end: window.end,
    early: early === true,
    result,
  });
  if (c.agg === 'reduce') {
    (c.plain ? windowed.reduce(highest) : windowed.reduce(highest, windowFunction)).sink('windows');
    return p;
  }
  const aggregate = (
    c.agg === 'collect' ? collect<Ev>() : c.agg === 'sum' ? sum<Ev>((e) => e.v) : sparse
  ) as AggregateFunction<Ev, unknown, unknown>;
  (c.plain ? windowed.aggregate(aggregate) : windowed.aggregate(aggregate, windowFunction)).sink('windows');
  return p;
}

function expectedOutput(c: Config, o: ModelOutput<Ev>): { sink: string; value: unknown } {
  if (o.sink === 'late') return { sink: 'late', value: o.element };
  const window = { start: o.start, end: o.end };
  const value = c.plain
    ? { key: o.key, window, result: o.result, ...(o.early ? { early: true } : {}) }
    : { k: o.key, ...window, early: o.early, result: o.result };
  return { sink: 'windows', value };
}

/** Runs the steps through floe and the model, comparing all outputs, in order, after each step. */
async function compare(c: Config, steps: readonly Step[], coverage: ModelCoverage): Promise<void> {
  const driver = new TestDriver(floePipeline(c));
  const model = new WindowModel<Ev>(
    {
      assigner: c.assigner,
      lateness: c.lateness,
      bound: c.bound,
      early: c.early,
      key: (e) => e.k,
      timestamp: (e) => e.ts,
      result: (contents) => modelResult(c.agg, contents),
    },
    coverage,
  );
  const check = () => {
    const actual = driver.outputs().map((o) => ({ sink: o.sink, value: o.value }));
    expect(actual).toEqual(model.outputs.map((o) => expectedOutput(c, o)));
  };
  for (const step of steps) {
    if (step.type === 'send') {
      await driver.send(step.events.map((e) => ({ partitionKey: String(e.k), data: e })));
      for (const e of step.events) model.element(e);
    } else if (step.type === 'watermark') {
      await driver.advanceWatermark(step.value);
      model.advance(step.value);
    } else {
      driver.restart();
    }
    check();
    expect(await driver.watermark()).toBe(model.watermark);
  }
  await driver.advanceWatermark(MAX_WATERMARK);
  model.advance(MAX_WATERMARK);
  check();
  // Everything fired and was cleaned up.
  expect(model.pending).toEqual({ windows: 0, timers: 0 });
  expect(await driver.timers()).toEqual([]);
  expect(driver.values(DEAD_LETTER_SINK)).toEqual([]);
}

/** FLOE_PROPERTY_RUNS_SCALE=20 runs every property 20 times as often (a deeper local search). */
const SCALE = Number(process.env.FLOE_PROPERTY_RUNS_SCALE ?? 1);
const NUM_RUNS = Math.max(1, Math.round(150 * SCALE));

/**
 * Checks that the generated input reached the cases that matter (each is met dozens of times in
 * a run of 150; fewer runs, with FLOE_PROPERTY_RUNS_SCALE < 1, check nothing).
 */
function expectReached(coverage: ModelCoverage, cases: ReadonlyArray<keyof ModelCoverage>): void {
  if (SCALE < 1) return;
  for (const c of cases) expect({ [c]: coverage[c] > 0 }).toEqual({ [c]: true });
}

describe('window operators equal a reference model of Flink’s WindowOperator', () => {
  it('tumbling and sliding windows: lateness, late side output, late and early firings', async () => {
    const coverage = emptyCoverage();
    await fc.assert(
      fc.asyncProperty(alignedConfigArb, stepsArb(), (c, steps) => compare(c, steps, coverage)),
      { numRuns: NUM_RUNS },
    );
    expectReached(coverage, [
      'late',
      'lateFirings',
      'noWindow',
      'earlyFirings',
      'earlySkipped',
      'nullResults',
      'sameTimeKeys',
    ]);
  });

  it('session windows: merges (also by late elements and touching windows), lateness, late output', async () => {
    const coverage = emptyCoverage();
    await fc.assert(
      fc.asyncProperty(sessionConfigArb, stepsArb(), (c, steps) => compare(c, steps, coverage)),
      { numRuns: NUM_RUNS },
    );
    expectReached(coverage, [
      'late',
      'lateFirings',
      'nullResults',
      'sameTimeKeys',
      'merges',
      'touchingMerges',
      'lateMerges',
      'contained',
    ]);
  });

  it('at extreme magnitudes: timestamps near ±8.64e15 ms, durations near 1e14 ms', async () => {
    const coverage = emptyCoverage();
    await fc.assert(
      fc.asyncProperty(hugeArb, ([c, steps]) => compare(c, steps, coverage)),
      { numRuns: NUM_RUNS },
    );
    expectReached(coverage, ['late', 'lateFirings', 'earlyFirings', 'merges', 'lateMerges']);
  });
});
