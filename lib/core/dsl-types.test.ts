/**
 * Type-level tests of the DSL, the Processor API and the test driver, through the public entry
 * points (`floe/core`, `floe/testing`). `expectTypeOf` does nothing at run time and each
 * `@ts-expect-error` line is misuse that must not compile: these checks are enforced by
 * `npm run typecheck` (tsc type-checks test files; tsconfig includes lib). The pipelines are only
 * built, never run.
 */

import type { Output, TimerSpec } from 'floe/core';
import {
  type AggregateFunction,
  average,
  boundedOutOfOrderness,
  collect,
  count,
  type DataStream,
  type KeyedProcessFunction,
  type KeyedStream,
  type ListState,
  listState,
  type MapState,
  mapState,
  max,
  min,
  minutes,
  type OutputTag,
  outputTag,
  type ProcessContext,
  type ProcessedStream,
  pipeline,
  processFunction,
  seconds,
  session,
  sliding,
  sum,
  type Timer,
  type TimeWindow,
  tumbling,
  type ValueState,
  valueState,
  type WindowedStream,
  type WindowResult,
} from 'floe/core';
import { type DriverRecord, TestDriver } from 'floe/testing';
import { describe, expectTypeOf, it } from 'vitest';

interface Click {
  readonly user: string;
  readonly page: string;
  readonly ms: number;
  readonly ts: number;
}
interface Purchase extends Click {
  readonly amount: number;
}
type Event = Click | Purchase;
const isPurchase = (e: Event): e is Purchase => 'amount' in e;

interface Alert {
  readonly user: string;
  readonly at: number;
}

/** A fresh source stream of clicks (each pipeline has one source). */
const clicks = (): DataStream<Click> => pipeline('types').source<Click>();
const keyedClicks = (): KeyedStream<Click, string> => clicks().keyBy((c) => c.user);
const minuteWindows = (): WindowedStream<Click, string> =>
  keyedClicks().window(tumbling({ size: minutes(1) }));

/**
 * Type-checks `code` without running it: the misuse in it is refused at run time too (mostly when
 * the pipeline is built), which is not what these tests are about.
 */
function typeOnly(_code: () => unknown): void {}

describe('element types', () => {
  it('flow from source<T>() through map, filter, flatMap and withTimestamps', () => {
    const source = pipeline('types').source<Event>();
    expectTypeOf(source).toEqualTypeOf<DataStream<Event>>();
    expectTypeOf(source.map((e) => e.ms / 1000)).toEqualTypeOf<DataStream<number>>();
    expectTypeOf(source.filter((e) => e.ms > 0)).toEqualTypeOf<DataStream<Event>>();
    expectTypeOf(source.flatMap((e) => [e.user, e.page])).toEqualTypeOf<DataStream<string>>();
    expectTypeOf(source.flatMap((e) => new Set([e.ts]))).toEqualTypeOf<DataStream<number>>();
    expectTypeOf(source.withTimestamps((e) => e.ts, boundedOutOfOrderness(seconds(5)))).toEqualTypeOf<
      DataStream<Event>
    >();
  });

  it('filter with a type guard narrows the element type', () => {
    const source = pipeline('types').source<Event>();
    expectTypeOf(source.filter(isPurchase)).toEqualTypeOf<DataStream<Purchase>>();
    // TypeScript infers the guard of an arrow function that narrows (TS 5.5)
    const names = pipeline('types').source<string | undefined>();
    expectTypeOf(names.filter((n) => n !== undefined)).toEqualTypeOf<DataStream<string>>();
  });

  it('a stream of a subtype is a stream of its supertype', () => {
    expectTypeOf<DataStream<Purchase>>().toExtend<DataStream<Click>>();
    expectTypeOf<KeyedStream<Purchase, string>>().toExtend<KeyedStream<Click, string>>();
    expectTypeOf<DataStream<Click>>().not.toExtend<DataStream<Purchase>>();
  });

  it('functions must accept the element type', () => {
    const s = clicks();
    typeOnly(() => {
      // @ts-expect-error a Click has no amount
      s.map((c: Purchase) => c.amount);
      // @ts-expect-error a filter predicate returns a boolean
      s.filter((c) => c.page);
      // @ts-expect-error flatMap returns an iterable
      s.flatMap((c) => c.ms);
      // @ts-expect-error the timestamp is a number
      s.withTimestamps((c) => new Date(c.ts), boundedOutOfOrderness(seconds(5)));
      // @ts-expect-error withTimestamps needs a watermark strategy
      s.withTimestamps((c) => c.ts, seconds(5));
    });
  });

  it('window operations exist only on a keyed stream, after window()', () => {
    const s = clicks();
    typeOnly(() => {
      // @ts-expect-error no window() before keyBy
      s.window(tumbling({ size: minutes(1) }));
      // @ts-expect-error no process() before keyBy
      s.process({ processElement: () => {} });
      // @ts-expect-error no aggregate() before window()
      keyedClicks().aggregate(count());
      // @ts-expect-error a keyed stream is not a sink (window or process it first)
      keyedClicks().sink('out');
    });
  });
});

describe('keys', () => {
  it('keyBy gives the key type: string, number or a literal union', () => {
    expectTypeOf(clicks().keyBy((c) => c.user)).toEqualTypeOf<KeyedStream<Click, string>>();
    expectTypeOf(clicks().keyBy((c) => c.ms)).toEqualTypeOf<KeyedStream<Click, number>>();
    expectTypeOf(clicks().keyBy((c) => (c.ms > 100 ? 'slow' : 'fast'))).toEqualTypeOf<
      KeyedStream<Click, 'slow' | 'fast'>
    >();
  });

  it('keys are strings or numbers', () => {
    typeOnly(() => {
      // @ts-expect-error an object is not a key
      clicks().keyBy((c) => ({ user: c.user }));
      // @ts-expect-error a boolean is not a key
      clicks().keyBy((c) => c.ms > 100);
      // @ts-expect-error a possibly missing key is not a key
      clicks().keyBy((c) => (c.page === '' ? undefined : c.page));
      // @ts-expect-error neither is null
      clicks().keyBy(() => null);
    });
  });

  it('the key type reaches window results, window functions and ctx.key', () => {
    const byMs = clicks().keyBy((c) => c.ms);
    expectTypeOf(byMs.window(tumbling({ size: 10 })).aggregate(count())).toEqualTypeOf<
      ProcessedStream<WindowResult<number, number>, Click>
    >();
    byMs.window(tumbling({ size: 10 })).reduce(
      (a) => a,
      ({ key }) => expectTypeOf(key).toEqualTypeOf<number>(),
    );
    byMs.process({
      processElement(_c, ctx) {
        expectTypeOf(ctx.key).toEqualTypeOf<number>();
      },
      onTimer(_t, ctx) {
        expectTypeOf(ctx.key).toEqualTypeOf<number>();
      },
    });
  });
});

describe('window aggregation', () => {
  it('aggregate gives { key, window, result } with the aggregate result type', () => {
    const counted = minuteWindows().aggregate(count());
    expectTypeOf(counted).toEqualTypeOf<ProcessedStream<WindowResult<string, number>, Click>>();
    expectTypeOf<WindowResult<string, number>>().toEqualTypeOf<{
      readonly key: string;
      readonly window: TimeWindow;
      readonly result: number;
      readonly early?: true;
    }>();
    expectTypeOf<TimeWindow>().toEqualTypeOf<{ readonly start: number; readonly end: number }>();
  });

  it('a user aggregate infers its accumulator and result types', () => {
    const avgMs = minuteWindows().aggregate({
      create: () => ({ total: 0, n: 0 }),
      add: (c, acc) => {
        expectTypeOf(c).toEqualTypeOf<Click>();
        expectTypeOf(acc).toEqualTypeOf<{ total: number; n: number }>();
        return { total: acc.total + c.ms, n: acc.n + 1 };
      },
      merge: (a, b) => ({ total: a.total + b.total, n: a.n + b.n }),
      result: (acc) => (acc.n === 0 ? null : acc.total / acc.n),
    });
    expectTypeOf(avgMs).toEqualTypeOf<ProcessedStream<WindowResult<string, number | null>, Click>>();
  });

  it('a mis-typed aggregate does not compile', () => {
    const w = minuteWindows();
    typeOnly(() => {
      // @ts-expect-error add returns a string where the accumulator is a number
      w.aggregate({ create: () => 0, add: (_c, acc) => `${acc}`, result: (acc) => acc });
      // @ts-expect-error merge returns a string where the accumulator is a number
      w.aggregate({ create: () => 0, add: (_c, acc) => acc + 1, merge: () => '', result: (acc) => acc });
      // @ts-expect-error result is given a number accumulator, not a string
      w.aggregate({ create: () => 0, add: (_c, acc) => acc + 1, result: (acc: string) => acc.length });
      const ofPurchases: AggregateFunction<Purchase, number, number> = sum((p) => p.amount);
      // @ts-expect-error an aggregate of purchases reads `amount`, which a Click lacks
      w.aggregate(ofPurchases);
      // @ts-expect-error the same, with a built-in
      w.aggregate(sum((p: Purchase) => p.amount));
      // @ts-expect-error aggregate needs an AggregateFunction: call count()
      w.aggregate(count);
    });
  });

  it('an aggregate of a supertype of the elements works on them', () => {
    const ofClicks: AggregateFunction<Click, number, number> = sum((c) => c.ms);
    const purchases = pipeline('types').source<Event>().filter(isPurchase);
    expectTypeOf(
      purchases
        .keyBy((p) => p.user)
        .window(tumbling({ size: 10 }))
        .aggregate(ofClicks),
    ).toEqualTypeOf<ProcessedStream<WindowResult<string, number>, Purchase>>();
  });

  it('built-in aggregates have their result types', () => {
    expectTypeOf(count<Click>()).toEqualTypeOf<AggregateFunction<Click, number, number>>();
    expectTypeOf(sum((c: Click) => c.ms)).toEqualTypeOf<AggregateFunction<Click, number, number>>();
    expectTypeOf(min((c: Click) => c.ms)).toEqualTypeOf<
      AggregateFunction<Click, number | null, number | null>
    >();
    expectTypeOf(max((c: Click) => c.ms)).toEqualTypeOf<
      AggregateFunction<Click, number | null, number | null>
    >();
    expectTypeOf(average((c: Click) => c.ms)).toEqualTypeOf<
      AggregateFunction<Click, [number, number], number>
    >();
    expectTypeOf(collect<Click>()).toEqualTypeOf<AggregateFunction<Click, Click[], Click[]>>();

    const w = minuteWindows();
    expectTypeOf(w.aggregate(count())).toEqualTypeOf<ProcessedStream<WindowResult<string, number>, Click>>();
    expectTypeOf(w.aggregate(sum((c) => c.ms))).toEqualTypeOf<
      ProcessedStream<WindowResult<string, number>, Click>
    >();
    expectTypeOf(w.aggregate(min((c) => c.ms))).toEqualTypeOf<
      ProcessedStream<WindowResult<string, number | null>, Click>
    >();
    expectTypeOf(w.aggregate(max((c) => c.ms))).toEqualTypeOf<
      ProcessedStream<WindowResult<string, number | null>, Click>
    >();
    expectTypeOf(w.aggregate(average((c) => c.ms))).toEqualTypeOf<
      ProcessedStream<WindowResult<string, number>, Click>
    >();
    expectTypeOf(w.aggregate(collect())).toEqualTypeOf<
      ProcessedStream<WindowResult<string, Click[]>, Click>
    >();
  });

  it('built-in selectors return numbers', () => {
    typeOnly(() => {
      // @ts-expect-error sum needs a function returning a number, not a field name
      sum<Click>('ms');
      // @ts-expect-error the selector returns a string
      minuteWindows().aggregate(sum((c) => c.page));
      // @ts-expect-error the selector returns a possibly missing number
      minuteWindows().aggregate(average((c) => (c.ms > 0 ? c.ms : undefined)));
    });
  });

  it('reduce combines elements of the stream type', () => {
    const w = minuteWindows();
    expectTypeOf(w.reduce((a, b) => (a.ts > b.ts ? a : b))).toEqualTypeOf<
      ProcessedStream<WindowResult<string, Click>, Click>
    >();
    typeOnly(() => {
      // @ts-expect-error reduce returns an element, not a number
      w.reduce((a, b) => a.ms + b.ms);
      // @ts-expect-error reduce is given two elements, not a number and an element
      w.reduce((_a: number, b: Click) => b);
    });
  });

  it('a window function gets { key, window, result, early? } and gives the output type', () => {
    const w = minuteWindows();
    const out = w.aggregate(count(), (r) => {
      expectTypeOf(r).toEqualTypeOf<WindowResult<string, number>>();
      expectTypeOf(r.window.start).toEqualTypeOf<number>();
      expectTypeOf(r.early).toEqualTypeOf<true | undefined>();
      return { page: r.key, views: r.result, from: r.window.start };
    });
    expectTypeOf(out).toEqualTypeOf<ProcessedStream<{ page: string; views: number; from: number }, Click>>();
    expectTypeOf(
      w.reduce(
        (a) => a,
        ({ result }) => result.page,
      ),
    ).toEqualTypeOf<ProcessedStream<string, Click>>();
  });

  it('a window function of the wrong input type does not compile', () => {
    const w = minuteWindows();
    typeOnly(() => {
      // @ts-expect-error the result is a count (number), not a list of clicks
      w.aggregate(count(), (r: WindowResult<string, Click[]>) => r.result.length);
      // @ts-expect-error the key is a string, not a number
      w.aggregate(count(), (r: WindowResult<number, number>) => r.key + 1);
      const ofNumbers = (r: WindowResult<string, number>) => r.result;
      // @ts-expect-error reduce's result is a Click, not a number
      w.reduce((a) => a, ofNumbers);
      // @ts-expect-error the window is read-only
      w.aggregate(count(), ({ window }) => (window.start = 0));
    });
  });

  it('window options keep the windowed stream type, for every assigner', () => {
    const keyed = keyedClicks();
    const w = keyed.window(sliding({ size: minutes(10), slide: minutes(1) }));
    expectTypeOf(w).toEqualTypeOf<WindowedStream<Click, string>>();
    expectTypeOf(keyed.window(session({ gap: minutes(30) }))).toEqualTypeOf<WindowedStream<Click, string>>();
    expectTypeOf(
      w.allowedLateness(seconds(30)).earlyFiring(seconds(10)).sideOutputLateData('late').uid('w'),
    ).toEqualTypeOf<WindowedStream<Click, string>>();
    typeOnly(() => {
      // @ts-expect-error window needs an assigner, not a duration
      keyed.window(minutes(1));
      // @ts-expect-error tumbling takes a size
      tumbling({ gap: minutes(1) });
    });
  });
});

describe('side outputs and late data', () => {
  it("a window's late data has the window's input type", () => {
    const counted = minuteWindows().aggregate(count());
    expectTypeOf(counted.lateData()).toEqualTypeOf<DataStream<Click>>();
    const reduced = minuteWindows().reduce(
      (a) => a,
      ({ result }) => result.ts,
    );
    expectTypeOf(reduced.lateData()).toEqualTypeOf<DataStream<Click>>();
  });

  it('a process function has no late data', () => {
    const processed = keyedClicks().process({ processElement: () => {} });
    // @ts-expect-error lateData() is only available on the result of a window aggregation
    typeOnly(() => processed.lateData());
    // the result is still a ProcessedStream of its output type
    expectTypeOf(processed).toExtend<ProcessedStream<unknown>>();
  });

  it('a typed tag types what ctx.output takes and what sideOutput gives', () => {
    const rejected = outputTag<Click>('rejected');
    expectTypeOf(rejected).toEqualTypeOf<OutputTag<Click>>();
    expectTypeOf(rejected).toExtend<string>();
    const processed = keyedClicks().process(
      processFunction<Click, Alert>()({
        processElement(c, ctx) {
          ctx.output(rejected, c);
          // @ts-expect-error the tag's elements are clicks, not strings
          ctx.output(rejected, c.user);
          // @ts-expect-error nor alerts
          ctx.output(rejected, { user: c.user, at: c.ts });
          ctx.output('untyped', c.user); // a plain name takes any value
          ctx.emit({ user: c.user, at: c.ts });
        },
      }),
    );
    expectTypeOf(processed.sideOutput(rejected)).toEqualTypeOf<DataStream<Click>>();
    expectTypeOf(processed.sideOutput('untyped')).toEqualTypeOf<DataStream<unknown>>();
    expectTypeOf(processed.sideOutput<string>('untyped')).toEqualTypeOf<DataStream<string>>();
    // @ts-expect-error the tag's elements are clicks
    typeOnly(() => processed.sideOutput<Alert>(rejected));
  });
});

describe('process functions', () => {
  it('get the element, key and output types', () => {
    const out = keyedClicks().process(
      processFunction<Click, Alert, string>()({
        processElement(c, ctx) {
          expectTypeOf(c).toEqualTypeOf<Click>();
          expectTypeOf(ctx.key).toEqualTypeOf<string>();
          expectTypeOf(ctx.timestamp).toEqualTypeOf<number>();
          expectTypeOf(ctx.currentWatermark).toEqualTypeOf<number>();
          expectTypeOf(ctx.currentProcessingTime).toEqualTypeOf<number>();
          ctx.emit({ user: c.user, at: c.ts });
          ctx.emit({ user: c.user, at: c.ts }, c.ts);
          // @ts-expect-error the output type is Alert
          ctx.emit(c.user);
          // @ts-expect-error an Alert has an `at`
          ctx.emit({ user: c.user });
        },
      }),
    );
    expectTypeOf(out).toEqualTypeOf<ProcessedStream<Alert, never>>();
  });

  it('a function typed by processFunction has no key type unless given one', () => {
    processFunction<Click, Alert>()({
      processElement(_c, ctx) {
        expectTypeOf(ctx.key).toEqualTypeOf<string | number>();
      },
    });
    const byNumber = processFunction<Click, Alert, number>()({
      processElement(_c, ctx) {
        expectTypeOf(ctx.key).toEqualTypeOf<number>();
      },
    });
    clicks()
      .keyBy((c) => c.ms)
      .process(byNumber);
    // @ts-expect-error the function is for number keys; this stream is keyed by strings
    keyedClicks().process(byNumber);
  });

  it('must accept the stream element type', () => {
    const onPurchases = processFunction<Purchase, Alert>()({
      processElement(p, ctx) {
        ctx.emit({ user: p.user, at: p.amount });
      },
    });
    // @ts-expect-error the function reads `amount`, which a Click lacks
    keyedClicks().process(onPurchases);
    const asObject: KeyedProcessFunction<Purchase, Alert> = onPurchases;
    // @ts-expect-error the same, for a function typed by hand
    keyedClicks().process(asObject);
    // @ts-expect-error and for a plain object with annotated parameters
    keyedClicks().process({ processElement: (p: Purchase, _ctx: ProcessContext<Alert>) => p.amount });
    // a function of a supertype of the elements is fine
    const onEvents = processFunction<Click, Alert>()({ processElement: () => {} });
    pipeline('types')
      .source<Event>()
      .filter(isPurchase)
      .keyBy((p) => p.user)
      .process(onEvents);
  });

  it('an inline function infers its state; its output is unknown unless typed', () => {
    const out = keyedClicks().process({
      state: { n: valueState<number>() },
      processElement(_c, ctx) {
        expectTypeOf(ctx.state.n).toEqualTypeOf<ValueState<number>>();
        // @ts-expect-error no state `m` is declared
        ctx.state.m;
      },
    });
    expectTypeOf(out).toEqualTypeOf<ProcessedStream<unknown, never>>();
  });

  it('a function without state has no state handles', () => {
    keyedClicks().process({
      processElement(_c, ctx) {
        // @ts-expect-error undeclared state is never
        ctx.state.n.update(1);
      },
    });
  });
});

describe('state', () => {
  it('descriptors type the handles: value, map and list, with TTL options', () => {
    keyedClicks().process(
      processFunction<Click, Alert>()({
        state: {
          last: valueState<Click>({ ttl: minutes(10) }),
          perPage: mapState<string, number>({ ttl: minutes(30) }),
          byWindow: mapState<number, number[]>({ layout: 'by-map-key' }),
          recent: listState<number>({ ttl: minutes(5) }),
          total: valueState<number>(),
        },
        processElement(c, ctx) {
          const { last, perPage, byWindow, recent, total } = ctx.state;
          expectTypeOf(last).toEqualTypeOf<ValueState<Click>>();
          expectTypeOf(perPage).toEqualTypeOf<MapState<string, number>>();
          expectTypeOf(byWindow).toEqualTypeOf<MapState<number, number[]>>();
          expectTypeOf(recent).toEqualTypeOf<ListState<number>>();

          // absent values read as undefined
          expectTypeOf(last.value()).toEqualTypeOf<Click | undefined>();
          expectTypeOf(perPage.get(c.page)).toEqualTypeOf<number | undefined>();
          expectTypeOf(perPage.has(c.page)).toEqualTypeOf<boolean>();
          expectTypeOf(perPage.entries()).toEqualTypeOf<Array<[string, number]>>();
          expectTypeOf(perPage.keys()).toEqualTypeOf<string[]>();
          expectTypeOf(perPage.values()).toEqualTypeOf<number[]>();
          expectTypeOf(perPage.size).toEqualTypeOf<number>();
          expectTypeOf(byWindow.entries()).toEqualTypeOf<Array<[number, number[]]>>();
          expectTypeOf(recent.get()).toEqualTypeOf<readonly number[]>();
          for (const [page, n] of perPage.entries()) {
            expectTypeOf(page).toEqualTypeOf<string>();
            expectTypeOf(n).toEqualTypeOf<number>();
          }

          last.update(c);
          perPage.put(c.page, (perPage.get(c.page) ?? 0) + 1);
          recent.add(c.ms);
          recent.update([...recent.get(), c.ms]);
          total.update((total.value() ?? 0) + c.ms);

          // @ts-expect-error a value state of clicks holds clicks
          last.update(c.ms);
          // @ts-expect-error the map's values are numbers
          perPage.put(c.page, c.page);
          // @ts-expect-error the map's keys are strings
          perPage.get(c.ms);
          // @ts-expect-error the list holds numbers
          recent.add(c.page);
          // @ts-expect-error update takes an array
          recent.update(c.ms);
          // @ts-expect-error the list read is read-only: add() or update()
          recent.get().push(c.ms);
          // @ts-expect-error a possibly absent value is not a number
          total.update(total.value() + 1);
          // @ts-expect-error a value state is not a map state
          last.get(c.page);
          // @ts-expect-error a map state is not a list state
          perPage.add(c.ms);
          // @ts-expect-error a number state is not a string state
          const asString: ValueState<string> = total;
          void asString;
        },
      }),
    );
  });

  it('descriptor options and keys are checked', () => {
    typeOnly(() => {
      // @ts-expect-error map keys are strings or numbers
      mapState<boolean, number>();
      // @ts-expect-error the option is ttl
      valueState<number>({ tll: minutes(1) });
      // @ts-expect-error the layout is 'per-key' or 'by-map-key'
      mapState<string, number>({ layout: 'by-key' });
      // @ts-expect-error a list state has no layout
      listState<number>({ layout: 'by-map-key' });
      // @ts-expect-error a map with expiring entries uses the 'per-key' layout
      mapState<string, number>({ layout: 'by-map-key', ttl: minutes(1) });
      // a layout chosen at run time is fine without a ttl
      const layout = Math.random() < 0.5 ? ('per-key' as const) : ('by-map-key' as const);
      mapState<string, number>({ layout });
      keyedClicks().process({
        // @ts-expect-error state entries are descriptors: call valueState()
        state: { n: valueState },
        processElement: () => {},
      });
    });
  });
});

describe('timers', () => {
  it('the timer service and timers are typed', () => {
    keyedClicks().process(
      processFunction<Click, Alert>()({
        processElement(c, ctx) {
          expectTypeOf(ctx.timers.registerEventTimeTimer(c.ts + minutes(1))).toEqualTypeOf<void>();
          ctx.timers.registerEventTimeTimer(c.ts, 'window');
          ctx.timers.registerProcessingTimeTimer(ctx.currentProcessingTime + 1000, 7);
          ctx.timers.deleteEventTimeTimer(c.ts, 'window');
          ctx.timers.deleteProcessingTimeTimer(c.ts);
          // @ts-expect-error a timer time is a number
          ctx.timers.registerEventTimeTimer(new Date(c.ts));
          // @ts-expect-error a namespace is a string or a number
          ctx.timers.registerEventTimeTimer(c.ts, { window: 1 });
        },
        onTimer(timer, ctx) {
          expectTypeOf(timer).toEqualTypeOf<Timer>();
          expectTypeOf(timer.time).toEqualTypeOf<number>();
          expectTypeOf(timer.domain).toEqualTypeOf<'event' | 'processing'>();
          expectTypeOf(timer.namespace).toEqualTypeOf<string | number>();
          expectTypeOf(ctx.key).toEqualTypeOf<string | number>();
          ctx.emit({ user: String(ctx.key), at: timer.time });
          // @ts-expect-error onTimer emits the output type too
          ctx.emit(timer.time);
        },
      }),
    );
  });
});

describe('sinks', () => {
  it('any stream can be written to a named sink', () => {
    expectTypeOf(clicks().sink('clicks')).toEqualTypeOf<void>();
    expectTypeOf(minuteWindows().aggregate(count()).sink('counts')).toEqualTypeOf<void>();
    // @ts-expect-error a sink is named by a string
    typeOnly(() => clicks().sink({ name: 'clicks' }));
  });
});

describe('the test driver (floe/testing)', () => {
  it('types records and what it reads back', () => {
    const p = pipeline('driven');
    p.source<Click>().sink('out');
    const driver = new TestDriver(p, { shards: 2 });
    expectTypeOf(driver.send).parameters.toEqualTypeOf<[records: readonly DriverRecord[]]>();
    expectTypeOf(driver.send).returns.toEqualTypeOf<Promise<void>>();
    expectTypeOf<DriverRecord>().toEqualTypeOf<{
      readonly partitionKey: string;
      readonly data: unknown;
      readonly shard?: string;
      readonly arrival?: number;
    }>();
    expectTypeOf(driver.advanceWatermark).toEqualTypeOf<
      (watermark: number, shard?: string) => Promise<void>
    >();
    expectTypeOf(driver.advanceProcessingTime).toEqualTypeOf<(now: number) => Promise<void>>();
    expectTypeOf(driver.restart).returns.toEqualTypeOf<void>();
    expectTypeOf(driver.outputs()).toEqualTypeOf<Output[]>();
    expectTypeOf(driver.outputs('out')[0]).toEqualTypeOf<Output | undefined>();
    expectTypeOf<Output>().toEqualTypeOf<{
      readonly id: string;
      readonly sink: string;
      readonly value: unknown;
    }>();
    // values are unknown unless given a type (read back from JSON: an unchecked assertion)
    expectTypeOf(driver.values('out')).toEqualTypeOf<unknown[]>();
    expectTypeOf(driver.values<Click>('out')).toEqualTypeOf<Click[]>();
    expectTypeOf(driver.stateValues).toEqualTypeOf<
      (operatorUid: string, key: string | number) => Promise<Record<string, unknown> | undefined>
    >();
    expectTypeOf(driver.state).returns.toEqualTypeOf<Promise<Record<string, unknown> | undefined>>();
    expectTypeOf(driver.timers).returns.toEqualTypeOf<Promise<readonly TimerSpec[]>>();
    expectTypeOf<TimerSpec>().toEqualTypeOf<{
      readonly operator: string;
      readonly domain: 'event' | 'processing';
      readonly time: number;
      readonly key: string | number;
      readonly namespace: string | number;
    }>();
    expectTypeOf(driver.watermark).returns.toEqualTypeOf<Promise<number>>();
    expectTypeOf(driver.shardIds).toEqualTypeOf<string[]>();
    typeOnly(() => {
      // @ts-expect-error a record needs its partition key
      driver.send([{ data: '{}' }]);
      // @ts-expect-error a state key is a string or a number
      driver.stateValues('process-0', { user: 'u1' });
      // @ts-expect-error a time is a number
      driver.advanceWatermark('1970-01-01');
    });
  });
});
