/**
 * Window semantics end to end through the TestDriver, checked against Flink's WindowOperator
 * with EventTimeTrigger: fire at WM >= end-1, end exclusive, late firing within the allowed
 * lateness with the whole contents, cleanup at end-1+lateness, late side output only when no
 * window accepted the element, session windows merging when they overlap or touch.
 */
import { describe, expect, it } from 'vitest';
import { type AggregateFunction, collect, count, sum } from './aggregates.ts';
import type { TimerSpec } from './checkpoint.ts';
import { compile } from './compile.ts';
import {
  DEAD_LETTER_SINK,
  DEFAULT_LATE_SINK,
  type Pipeline,
  passthroughDeserializer,
  pipeline,
} from './dsl.ts';
import { MemoryBackend } from './memory-backend.ts';
import type { SourceRecord } from './ports.ts';
import { ShardTask } from './shard-task.ts';
import { type DriverRecord, TestDriver } from './testing/test-driver.ts';
import { MAX_DURATION, MAX_EVENT_TIME, MAX_WATERMARK } from './time.ts';
import { withInlineTimers } from './timer-log.ts';
import { boundedOutOfOrderness, monotonic, type WatermarkStrategy } from './watermarks.ts';
import type { WindowResult } from './window-operator.ts';
import { session, sliding, tumbling, type WindowAssigner } from './windows.ts';

interface Ev {
  readonly k: string;
  readonly ts: number;
  readonly v: number;
}

/** A JSON record of key `k` at event time `ts` (value defaults to ts). */
const ev = (k: string, ts: number, v: number = ts): DriverRecord => ({
  partitionKey: k,
  data: JSON.stringify({ k, ts, v }),
});
const e = (k: string, ts: number, v: number = ts): Ev => ({ k, ts, v });

/** `key[start,end)=v1,v2,...` with the values sorted, so the window contents are exact. */
const show = ({ key, window, result }: WindowResult<string, Ev[]>): string =>
  `${key}[${window.start},${window.end})=${result
    .map((x) => x.v)
    .sort((a, b) => a - b)
    .join(',')}`;

interface Options {
  readonly watermarks?: WatermarkStrategy;
  readonly lateness?: number;
  readonly lateName?: string;
  readonly shards?: number;
}

/** key -> window(assigner) -> collect -> show -> sink 'out', in a test driver. */
function collecting(assigner: WindowAssigner, o: Options = {}): TestDriver {
  return new TestDriver(collectingPipeline(assigner, o), { shards: o.shards ?? 1 });
}

function collectingPipeline(assigner: WindowAssigner, o: Options): Pipeline {
  const p = pipeline('windows');
  const w = p
    .source<Ev>()
    .withTimestamps((x) => x.ts, o.watermarks ?? boundedOutOfOrderness(0))
    .keyBy((x) => x.k)
    .window(assigner);
  if (o.lateness !== undefined) w.allowedLateness(o.lateness);
  if (o.lateName !== undefined) w.sideOutputLateData(o.lateName);
  w.aggregate(collect<Ev>(), show).sink('out');
  return p;
}

const out = (d: TestDriver): string[] => d.values<string>('out');
const late = (d: TestDriver): Ev[] => d.values<Ev>(DEFAULT_LATE_SINK);

/** The aligned windows held in state for a key: their starts, in stored order. */
async function alignedStarts(d: TestDriver, key: string): Promise<number[] | undefined> {
  const s = await d.state('window-0', key);
  return s === undefined ? undefined : (s.w as Array<[number, unknown]>).map(([start]) => start);
}

/** The session windows held in state for a key, as [start, end) pairs sorted by start. */
async function sessions(d: TestDriver, key: string): Promise<Array<[number, number]> | undefined> {
  const s = await d.state('window-0', key);
  if (s === undefined) return undefined;
  return (s.w as Array<[number, [number, unknown]]>)
    .map(([start, [end]]): [number, number] => [start, end])
    .sort((a, b) => a[0] - b[0]);
}

/** Pending event-time timers of the first shard as [time, key, namespace]. */
async function timers(d: TestDriver, shard?: string): Promise<Array<[number, string | number, unknown]>> {
  return (await d.timers(shard)).map((t) => {
    expect(t.operator).toBe('window-0');
    expect(t.domain).toBe('event');
    return [t.time, t.key, t.namespace];
  });
}

describe('tumbling windows', () => {
  it('fires exactly when the watermark reaches end-1, not at end-2', async () => {
    const d = collecting(tumbling({ size: 10 }));
    await d.send([ev('a', 1), ev('a', 5)]);
    expect(await d.watermark()).toBe(4);
    await d.advanceWatermark(8);
    expect(out(d)).toEqual([]);
    expect(await timers(d)).toEqual([[9, 'a', 0]]);
    await d.advanceWatermark(9);
    expect(out(d)).toEqual(['a[0,10)=1,5']);
  });

  it('fires from element timestamps; the end is exclusive (an element at end opens the next window)', async () => {
    const d = collecting(tumbling({ size: 10 }));
    await d.send([ev('a', 1), ev('a', 9)]);
    expect(await d.watermark()).toBe(8);
    expect(out(d)).toEqual([]);
    await d.send([ev('a', 10)]);
    expect(await d.watermark()).toBe(9);
    expect(out(d)).toEqual(['a[0,10)=1,9']);
    expect(await alignedStarts(d, 'a')).toEqual([10]);
    await d.advanceWatermark(18);
    expect(out(d)).toEqual(['a[0,10)=1,9']);
    await d.advanceWatermark(19);
    expect(out(d)).toEqual(['a[0,10)=1,9', 'a[10,20)=10']);
    expect(late(d)).toEqual([]);
  });

  it('fires the windows of several keys in (time, key) order', async () => {
    const d = collecting(tumbling({ size: 10 }));
    await d.send([ev('b', 2), ev('a', 3), ev('b', 12), ev('c', 11)]);
    expect(out(d)).toEqual(['a[0,10)=3', 'b[0,10)=2']);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(out(d)).toEqual(['a[0,10)=3', 'b[0,10)=2', 'b[10,20)=12', 'c[10,20)=11']);
    expect(await d.watermark()).toBe(MAX_WATERMARK);
  });

  it('numeric keys fire in numeric order (timers are ordered by time, key, namespace)', async () => {
    const p = pipeline('numeric-keys');
    p.source<Ev>()
      .withTimestamps((x) => x.ts, monotonic())
      .keyBy((x) => Number(x.k))
      .window(tumbling({ size: 10 }))
      .aggregate(count<Ev>(), ({ key, window, result }) => `${key}@${window.start}:${result}`)
      .sink('out');
    const d = new TestDriver(p);
    await d.send([ev('10', 1), ev('2', 2), ev('10', 3), ev('1', 15)]);
    expect(d.values('out')).toEqual(['2@0:1', '10@0:2']);
    expect(await d.state('window-0', 1)).toEqual({ w: [[10, 1]] });
    expect(await d.state('window-0', '1')).toBeUndefined();
  });

  it('advancing the watermark to a lower value changes nothing', async () => {
    const d = collecting(tumbling({ size: 10 }));
    await d.send([ev('a', 5)]);
    await d.advanceWatermark(7);
    await d.advanceWatermark(3);
    expect(await d.watermark()).toBe(7);
    await d.send([ev('a', 6)]);
    expect(await d.watermark()).toBe(7);
    expect(out(d)).toEqual([]);
    expect(await timers(d)).toEqual([[9, 'a', 0]]);
  });

  it('without lateness: fires and cleans up at end-1; a later element for it is side-output', async () => {
    const d = collecting(tumbling({ size: 10 }));
    await d.send([ev('a', 4), ev('a', 7)]);
    expect(await alignedStarts(d, 'a')).toEqual([0]);
    await d.advanceWatermark(9);
    expect(out(d)).toEqual(['a[0,10)=4,7']);
    expect(await d.state('window-0', 'a')).toBeUndefined();
    expect(await timers(d)).toEqual([]);
    await d.send([ev('a', 9), ev('a', 0)]);
    expect(late(d)).toEqual([e('a', 9), e('a', 0)]);
    expect(out(d)).toEqual(['a[0,10)=4,7']);
    expect(await d.state('window-0', 'a')).toBeUndefined();
    expect(await timers(d)).toEqual([]);
  });

  it('allowed lateness: late elements re-fire with the whole contents until end-1+lateness', async () => {
    const d = collecting(tumbling({ size: 10 }), { lateness: 5 });
    await d.send([ev('a', 1)]);
    expect(await timers(d)).toEqual([
      [9, 'a', 0],
      [14, 'a', 0],
    ]);
    await d.advanceWatermark(9);
    expect(out(d)).toEqual(['a[0,10)=1']);
    // The window is kept for the allowed lateness: only its cleanup timer is left.
    expect(await alignedStarts(d, 'a')).toEqual([0]);
    expect(await timers(d)).toEqual([[14, 'a', 0]]);

    await d.send([ev('a', 3)]);
    expect(await d.watermark()).toBe(9);
    expect(out(d)).toEqual(['a[0,10)=1', 'a[0,10)=1,3']);

    // end-1+lateness = 14 > 13: still accepted, re-fires with everything so far.
    await d.advanceWatermark(13);
    await d.send([ev('a', 4)]);
    expect(out(d)).toEqual(['a[0,10)=1', 'a[0,10)=1,3', 'a[0,10)=1,3,4']);
    expect(await d.state('window-0', 'a')).toEqual({ w: [[0, [e('a', 1), e('a', 3), e('a', 4)]]] });
    expect(late(d)).toEqual([]);

    // At end-1+lateness == watermark the window is cleaned up without firing again.
    await d.advanceWatermark(14);
    expect(out(d)).toHaveLength(3);
    expect(await d.state('window-0', 'a')).toBeUndefined();
    expect(await timers(d)).toEqual([]);

    // ts + lateness <= watermark and no window accepts it: late side output.
    await d.send([ev('a', 5), ev('a', 9)]);
    expect(late(d)).toEqual([e('a', 5), e('a', 9)]);
    expect(out(d)).toHaveLength(3);
    expect(await d.state('window-0', 'a')).toBeUndefined();

    // The next window is not late.
    await d.send([ev('a', 10)]);
    expect(late(d)).toHaveLength(2);
    expect(await alignedStarts(d, 'a')).toEqual([10]);
  });

  it('allowed lateness: a window first seen within its lateness fires at once and keeps only its cleanup timer', async () => {
    const d = collecting(tumbling({ size: 10 }), { lateness: 5 });
    await d.advanceWatermark(12);
    await d.send([ev('a', 2)]);
    expect(out(d)).toEqual(['a[0,10)=2']);
    expect(await timers(d)).toEqual([[14, 'a', 0]]);
    await d.send([ev('a', 8)]);
    expect(out(d)).toEqual(['a[0,10)=2', 'a[0,10)=2,8']);
    await d.advanceWatermark(14);
    expect(await d.state('window-0', 'a')).toBeUndefined();
    expect(await timers(d)).toEqual([]);
    expect(late(d)).toEqual([]);
  });

  it('allowed lateness boundary: end-1+lateness == watermark is late even for a never-seen window', async () => {
    const d = collecting(tumbling({ size: 10 }), { lateness: 5 });
    await d.advanceWatermark(14);
    await d.send([ev('a', 9)]);
    expect(out(d)).toEqual([]);
    expect(late(d)).toEqual([e('a', 9)]);
    expect(await d.state('window-0', 'a')).toBeUndefined();
    expect(await timers(d)).toEqual([]);
  });

  it('state cleanup removes only the fired window', async () => {
    const d = collecting(tumbling({ size: 10 }), { watermarks: boundedOutOfOrderness(100) });
    await d.send([ev('a', 5), ev('a', 15), ev('a', 25)]);
    expect(await alignedStarts(d, 'a')).toEqual([0, 10, 20]);
    await d.advanceWatermark(19);
    expect(out(d)).toEqual(['a[0,10)=5', 'a[10,20)=15']);
    expect(await d.state('window-0', 'a')).toEqual({ w: [[20, [e('a', 25)]]] });
    expect(await timers(d)).toEqual([[29, 'a', 20]]);
  });

  it('reduce without a window function emits WindowResult with the reduced element', async () => {
    const p = pipeline('reduce');
    p.source<Ev>()
      .withTimestamps((x) => x.ts, monotonic())
      .keyBy((x) => x.k)
      .window(tumbling({ size: 10 }))
      .reduce((a, b) => ({ k: a.k, ts: Math.max(a.ts, b.ts), v: a.v + b.v }))
      .sink('out');
    const d = new TestDriver(p);
    await d.send([ev('a', 1, 10), ev('a', 4, 5), ev('b', 2, 7), ev('a', 12, 1)]);
    expect(d.values('out')).toEqual([
      { key: 'a', window: { start: 0, end: 10 }, result: { k: 'a', ts: 4, v: 15 } },
      { key: 'b', window: { start: 0, end: 10 }, result: { k: 'b', ts: 2, v: 7 } },
    ]);
  });

  it('reduce with a window function', async () => {
    const p = pipeline('reduce-fn');
    p.source<Ev>()
      .withTimestamps((x) => x.ts, monotonic())
      .keyBy((x) => x.k)
      .window(tumbling({ size: 10 }))
      .reduce(
        (a, b) => ({ k: a.k, ts: a.ts, v: Math.max(a.v, b.v) }),
        ({ key, window, result }) => ({ key, start: window.start, end: window.end, max: result.v }),
      )
      .sink('out');
    const d = new TestDriver(p);
    await d.send([ev('a', 1, 3), ev('a', 2, 9), ev('a', 3, 4), ev('a', 10, 0)]);
    expect(d.values('out')).toEqual([{ key: 'a', start: 0, end: 10, max: 9 }]);
  });

  it('aggregate without a window function (count), and with one (sum)', async () => {
    const p = pipeline('aggregate');
    const keyed = p
      .source<Ev>()
      .withTimestamps((x) => x.ts, monotonic())
      .keyBy((x) => x.k);
    keyed
      .window(tumbling({ size: 10 }))
      .aggregate(count<Ev>())
      .sink('counts');
    keyed
      .window(tumbling({ size: 10 }))
      .aggregate(
        sum<Ev>((x) => x.v),
        ({ key, window, result }) => `${key}@${window.start}:${result}`,
      )
      .sink('sums');
    const d = new TestDriver(p);
    await d.send([ev('a', 1, 10), ev('a', 4, 5), ev('a', 9, 1), ev('a', 10, 100)]);
    expect(d.values('counts')).toEqual([{ key: 'a', window: { start: 0, end: 10 }, result: 3 }]);
    expect(d.values('sums')).toEqual(['a@0:16']);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(d.values('counts')).toEqual([
      { key: 'a', window: { start: 0, end: 10 }, result: 3 },
      { key: 'a', window: { start: 10, end: 20 }, result: 1 },
    ]);
    expect(d.values('sums')).toEqual(['a@0:16', 'a@10:100']);
    // Two window operators: uids window-0 and window-1, each with its own state.
    expect(await d.state('window-0', 'a')).toBeUndefined();
    expect(await d.state('window-1', 'a')).toBeUndefined();
  });

  it('a window whose result is null or undefined emits nothing, as Flink skips null contents; a late firing with a result emits', async () => {
    const p = pipeline('null-results');
    const keyed = p
      .source<Ev>()
      .withTimestamps((x) => x.ts, monotonic())
      .keyBy((x) => x.k);
    // Only windows summing to more than 10 have a result; the window function sees only those.
    const overTen: AggregateFunction<Ev, number, number | null> = {
      create: () => 0,
      add: (x, acc) => acc + x.v,
      result: (acc) => (acc > 10 ? acc : null),
    };
    keyed
      .window(tumbling({ size: 10 }))
      .allowedLateness(20)
      .aggregate(overTen, ({ key, window, result }) => `${key}@${window.start}:${result}`)
      .sink('aligned');
    keyed
      .window(session({ gap: 5 }))
      .reduce(
        (a, b) => ({ k: a.k, ts: a.ts, v: a.v + b.v }),
        ({ key, window, result }) => (result.v > 10 ? `${key}[${window.start},${window.end})` : undefined),
      )
      .sink('sessions');
    const d = new TestDriver(p);
    await d.send([ev('a', 1, 5), ev('b', 2, 11), ev('a', 15, 0)]);
    expect(d.values('aligned')).toEqual(['b@0:11']);
    // A late element within the lateness gives window [0,10) of 'a' a result: it fires then.
    await d.send([ev('a', 3, 6)]);
    expect(d.values('aligned')).toEqual(['b@0:11', 'a@0:11']);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(d.values('aligned')).toEqual(['b@0:11', 'a@0:11']);
    expect(await d.state('window-0', 'a')).toBeUndefined();
    // The window function's undefined is an element like any other: only the aggregate's result is checked.
    expect(d.values('sessions')).toEqual([undefined, 'b[2,7)', undefined]);
  });

  it("an add returning null empties the window, as in Flink's heap state: the next add starts from create(), result() and merge() never see null", async () => {
    const p = pipeline('null-accumulators');
    const keyed = p
      .source<Ev>()
      .withTimestamps((x) => x.ts, boundedOutOfOrderness(100))
      .keyBy((x) => x.k);
    // v = 0 resets: the accumulator becomes null.
    const resetting: AggregateFunction<Ev, number[] | null, string> = {
      create: () => [],
      add: (x, acc) => (x.v === 0 ? null : [...acc!, x.v]),
      result: (acc) => acc!.join('+'),
      merge: (a, b) => [...a!, ...b!],
    };
    keyed
      .window(tumbling({ size: 10 }))
      .aggregate(resetting, ({ window, result }) => `${window.start}:${result}`)
      .sink('aligned');
    keyed
      .window(session({ gap: 3 }))
      .aggregate(resetting, ({ window, result }) => `[${window.start},${window.end}):${result}`)
      .sink('sessions');
    const d = new TestDriver(p);
    // Sessions: [1,4) holds 1, then null; [6,9) holds 6; 3 bridges them into [1,9), where the
    // null one is skipped. [11,14) holds 11, then 12 resets it into [11,15).
    await d.send([
      ev('a', 1, 1),
      ev('a', 1, 0),
      ev('a', 6, 6),
      ev('a', 3, 3),
      ev('a', 11, 11),
      ev('a', 12, 0),
    ]);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(d.values(DEAD_LETTER_SINK)).toEqual([]);
    // [0,10): 1, reset, 6, 3; [10,20) is null at its end and emits nothing.
    expect(d.values('aligned')).toEqual(['0:6+3']);
    expect(d.values('sessions')).toEqual(['[1,9):6+3']);
  });

  it('works with already-decoded records (passthroughDeserializer)', async () => {
    const p = pipeline('passthrough');
    p.source<Ev>({ deserializer: passthroughDeserializer() })
      .withTimestamps((x) => x.ts, monotonic())
      .keyBy((x) => x.k)
      .window(tumbling({ size: 10 }))
      .aggregate(collect<Ev>(), show)
      .sink('out');
    const d = new TestDriver(p);
    await d.send([
      { partitionKey: 'a', data: e('a', 3) },
      { partitionKey: 'a', data: e('a', 11) },
    ]);
    expect(d.values('out')).toEqual(['a[0,10)=3']);
  });
});

describe('sliding windows', () => {
  it('assigns every element to size/slide windows and fires them in end order', async () => {
    const d = collecting(sliding({ size: 10, slide: 5 }), { watermarks: boundedOutOfOrderness(100) });
    await d.send([ev('a', 7), ev('a', 12)]);
    expect(await alignedStarts(d, 'a')).toEqual([0, 5, 10]); // live windows, by start
    await d.advanceWatermark(8);
    expect(out(d)).toEqual([]);
    await d.advanceWatermark(9);
    expect(out(d)).toEqual(['a[0,10)=7']);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(out(d)).toEqual(['a[0,10)=7', 'a[5,15)=7,12', 'a[10,20)=12']);
    expect(await d.state('window-0', 'a')).toBeUndefined();
    expect(await timers(d)).toEqual([]);
  });

  it('handles a size that is not a multiple of the slide', async () => {
    const d = collecting(sliding({ size: 10, slide: 4 }), { watermarks: boundedOutOfOrderness(100) });
    await d.send([ev('a', 3), ev('a', 9)]);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(out(d)).toEqual(['a[-4,6)=3', 'a[0,10)=3,9', 'a[4,14)=9', 'a[8,18)=9']);
  });

  it('an element accepted by at least one window is not side-output', async () => {
    const d = collecting(sliding({ size: 10, slide: 5 }));
    await d.send([ev('a', 3), ev('a', 12)]);
    expect(await d.watermark()).toBe(11);
    expect(out(d)).toEqual(['a[-5,5)=3', 'a[0,10)=3']);
    // [0,10) is gone but [5,15) still accepts ts=8.
    await d.send([ev('a', 8)]);
    expect(late(d)).toEqual([]);
    await d.advanceWatermark(14);
    expect(out(d)).toEqual(['a[-5,5)=3', 'a[0,10)=3', 'a[5,15)=8,12']);
    // ts=9 fits no live window any more (both [0,10) and [5,15) are cleaned up): late.
    await d.send([ev('a', 9)]);
    expect(late(d)).toEqual([e('a', 9)]);
    // ts=10 is late for [5,15) but [10,20) accepts it.
    await d.send([ev('a', 10)]);
    expect(late(d)).toEqual([e('a', 9)]);
    await d.advanceWatermark(19);
    expect(out(d)).toEqual(['a[-5,5)=3', 'a[0,10)=3', 'a[5,15)=8,12', 'a[10,20)=10,12']);
  });

  it('allowed lateness re-fires only the windows still within their lateness', async () => {
    const d = collecting(sliding({ size: 10, slide: 5 }), {
      lateness: 3,
      watermarks: boundedOutOfOrderness(100),
    });
    await d.send([ev('a', 7)]);
    await d.advanceWatermark(11);
    expect(out(d)).toEqual(['a[0,10)=7']);
    await d.send([ev('a', 8)]);
    // [0,10): 9+3 = 12 > 11, re-fires with all contents; [5,15) accepts without firing.
    expect(out(d)).toEqual(['a[0,10)=7', 'a[0,10)=7,8']);
    await d.advanceWatermark(12);
    expect(await alignedStarts(d, 'a')).toEqual([5]);
    await d.send([ev('a', 6)]);
    expect(out(d)).toEqual(['a[0,10)=7', 'a[0,10)=7,8']);
    expect(late(d)).toEqual([]);
    await d.advanceWatermark(14);
    expect(out(d)).toEqual(['a[0,10)=7', 'a[0,10)=7,8', 'a[5,15)=6,7,8']);
    await d.advanceWatermark(17);
    expect(await d.state('window-0', 'a')).toBeUndefined();
    expect(await timers(d)).toEqual([]);
    await d.send([ev('a', 9)]);
    expect(late(d)).toEqual([e('a', 9)]);
  });

  it('sliding windows with an offset and negative starts', async () => {
    const d = collecting(sliding({ size: 10, slide: 5, offset: 2 }), {
      watermarks: boundedOutOfOrderness(100),
    });
    await d.send([ev('a', 1), ev('a', -9)]);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(out(d)).toEqual(['a[-18,-8)=-9', 'a[-13,-3)=-9', 'a[-8,2)=1', 'a[-3,7)=1']);
  });
});

describe('session windows', () => {
  const gap10 = (o: Options = {}) =>
    collecting(session({ gap: 10 }), { watermarks: boundedOutOfOrderness(1000), ...o });

  it('fires at end-1 (end = last element + gap), not at end-2, then cleans up', async () => {
    const d = gap10();
    await d.send([ev('a', 0), ev('a', 5)]);
    expect(await sessions(d, 'a')).toEqual([[0, 15]]);
    // The session's alarm is still where its first element set it; it moves on to the end.
    expect(await timers(d)).toEqual([[9, 'a', 0]]);
    await d.advanceWatermark(13);
    expect(out(d)).toEqual([]);
    expect(await timers(d)).toEqual([[14, 'a', 0]]);
    await d.advanceWatermark(14);
    expect(out(d)).toEqual(['a[0,15)=0,5']);
    expect(await d.state('window-0', 'a')).toBeUndefined();
    expect(await timers(d)).toEqual([]);
  });

  it('merges sessions that touch (end == start of the other) but not those a millisecond apart', async () => {
    const d = gap10();
    await d.send([ev('a', 0), ev('a', 10), ev('b', 0), ev('b', 11)]);
    expect(await sessions(d, 'a')).toEqual([[0, 20]]);
    expect(await sessions(d, 'b')).toEqual([
      [0, 10],
      [11, 21],
    ]);
    expect(await timers(d)).toEqual([
      [9, 'a', 0],
      [9, 'b', 0],
      [20, 'b', 11],
    ]);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(out(d)).toEqual(['b[0,10)=0', 'a[0,20)=0,10', 'b[11,21)=11']);
  });

  it('merges a new element that touches an earlier session from the left', async () => {
    const d = gap10();
    await d.send([ev('a', 20), ev('a', 10)]);
    expect(await sessions(d, 'a')).toEqual([[10, 30]]);
    // A new start, a new alarm; the merged session's alarm fires and finds no session.
    expect(await timers(d)).toEqual([
      [29, 'a', 10],
      [29, 'a', 20],
    ]);
    await d.advanceWatermark(29);
    expect(out(d)).toEqual(['a[10,30)=10,20']);
  });

  it('merges an element inside an existing session without changing it', async () => {
    const d = gap10();
    await d.send([ev('a', 0), ev('a', 8), ev('a', 3)]);
    expect(await sessions(d, 'a')).toEqual([[0, 18]]);
    expect(await timers(d)).toEqual([[9, 'a', 0]]);
    await d.advanceWatermark(17);
    expect(out(d)).toEqual(['a[0,18)=0,3,8']);
  });

  it('three-way merge: an element touching two sessions bridges them', async () => {
    const d = gap10();
    await d.send([ev('a', 0), ev('a', 20)]);
    expect(await sessions(d, 'a')).toEqual([
      [0, 10],
      [20, 30],
    ]);
    await d.send([ev('a', 10)]);
    expect(await sessions(d, 'a')).toEqual([[0, 30]]);
    expect(await timers(d)).toEqual([
      [9, 'a', 0],
      [29, 'a', 20],
    ]);
    await d.advanceWatermark(28);
    expect(out(d)).toEqual([]);
    expect(await timers(d)).toEqual([
      [29, 'a', 0],
      [29, 'a', 20],
    ]);
    await d.advanceWatermark(29);
    expect(out(d)).toEqual(['a[0,30)=0,10,20']);
  });

  it('three-way merge: an element overlapping two sessions bridges them', async () => {
    const d = gap10();
    await d.send([ev('a', 0), ev('a', 15), ev('a', 7)]);
    expect(await sessions(d, 'a')).toEqual([[0, 25]]);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(out(d)).toEqual(['a[0,25)=0,7,15']);
  });

  it('a late element within lateness that bridges two fired sessions re-fires the merged window', async () => {
    const d = gap10({ lateness: 20 });
    await d.send([ev('a', 0), ev('a', 13)]);
    await d.advanceWatermark(22);
    expect(out(d)).toEqual(['a[0,10)=0', 'a[13,23)=13']);
    expect(await timers(d)).toEqual([
      [29, 'a', 0],
      [42, 'a', 13],
    ]);
    await d.send([ev('a', 5)]);
    expect(out(d)).toEqual(['a[0,10)=0', 'a[13,23)=13', 'a[0,23)=0,5,13']);
    expect(await sessions(d, 'a')).toEqual([[0, 23]]);
    // The merged session keeps the alarm of [0,10), its old cleanup, which moves on to the new one.
    expect(await timers(d)).toEqual([
      [29, 'a', 0],
      [42, 'a', 13],
    ]);
    expect(late(d)).toEqual([]);
    await d.advanceWatermark(41);
    expect(await sessions(d, 'a')).toEqual([[0, 23]]);
    await d.advanceWatermark(42);
    expect(out(d)).toHaveLength(3);
    expect(await d.state('window-0', 'a')).toBeUndefined();
    expect(await timers(d)).toEqual([]);
  });

  it('a late element that extends a fired session past the watermark fires at the new end-1', async () => {
    const d = gap10({ lateness: 20 });
    await d.send([ev('a', 0)]);
    await d.advanceWatermark(9);
    expect(out(d)).toEqual(['a[0,10)=0']);
    await d.send([ev('a', 8)]);
    expect(out(d)).toEqual(['a[0,10)=0']);
    expect(await sessions(d, 'a')).toEqual([[0, 18]]);
    // Reopened: its alarm (the old cleanup at 29) is after its new end, so it gets a timer there.
    expect(await timers(d)).toEqual([
      [17, 'a', 0],
      [29, 'a', 0],
    ]);
    await d.advanceWatermark(16);
    expect(out(d)).toEqual(['a[0,10)=0']);
    await d.advanceWatermark(17);
    expect(out(d)).toEqual(['a[0,10)=0', 'a[0,18)=0,8']);
    expect(await timers(d)).toEqual([
      [29, 'a', 0],
      [37, 'a', 0],
    ]);
    await d.advanceWatermark(37);
    expect(await d.state('window-0', 'a')).toBeUndefined();
    expect(out(d)).toHaveLength(2);
  });

  it('a late element forming its own already-late session goes to the late output', async () => {
    const d = collecting(session({ gap: 10 }), { lateness: 5 });
    await d.send([ev('a', 50)]);
    expect(await d.watermark()).toBe(49);
    // [35,45): 44 + 5 = 49 <= 49, and it touches no live session.
    await d.send([ev('a', 35)]);
    expect(late(d)).toEqual([e('a', 35)]);
    expect(await sessions(d, 'a')).toEqual([[50, 60]]);
    // [36,46): 45 + 5 = 50 > 49: accepted, and fires at once (45 <= 49).
    await d.send([ev('a', 36)]);
    expect(out(d)).toEqual(['a[36,46)=36']);
    expect(late(d)).toEqual([e('a', 35)]);
    expect(await timers(d)).toEqual([
      [50, 'a', 36],
      [59, 'a', 50],
    ]);
    // [40,50) overlaps [36,46) and touches [50,60): one session [36,60), not yet due.
    await d.send([ev('a', 40)]);
    expect(await sessions(d, 'a')).toEqual([[36, 60]]);
    expect(await timers(d)).toEqual([
      [50, 'a', 36],
      [59, 'a', 36],
      [59, 'a', 50],
    ]);
    expect(out(d)).toEqual(['a[36,46)=36']);
    await d.advanceWatermark(59);
    expect(out(d)).toEqual(['a[36,46)=36', 'a[36,60)=36,40,50']);
    await d.advanceWatermark(64);
    expect(await d.state('window-0', 'a')).toBeUndefined();
    expect(await timers(d)).toEqual([]);
    expect(late(d)).toEqual([e('a', 35)]);
  });

  it('an element late by its timestamp is accepted when it merges into a live session', async () => {
    const d = collecting(session({ gap: 10 }));
    await d.send([ev('a', 20)]);
    expect(await d.watermark()).toBe(19);
    await d.send([ev('a', 10), ev('a', 5), ev('a', -6)]);
    // 10 touches [20,30); 5 overlaps [10,30); -6 opens [-6,4), which touches nothing and is late.
    expect(late(d)).toEqual([e('a', -6)]);
    expect(await sessions(d, 'a')).toEqual([[5, 30]]);
    expect(out(d)).toEqual([]);
    await d.advanceWatermark(29);
    expect(out(d)).toEqual(['a[5,30)=5,10,20']);
  });

  it('an element is merged before the watermark it raises fires anything', async () => {
    const d = collecting(session({ gap: 10 }));
    await d.send([ev('a', 0), ev('a', 10)]);
    expect(await d.watermark()).toBe(9);
    // ts=20 touches [0,20) and merges into it before the watermark moves to 19.
    await d.send([ev('a', 20)]);
    expect(await d.watermark()).toBe(19);
    expect(out(d)).toEqual([]);
    expect(await sessions(d, 'a')).toEqual([[0, 30]]);
  });

  it('without lateness a fired session is gone: a touching element opens a new session', async () => {
    const d = collecting(session({ gap: 10 }));
    await d.send([ev('a', 0), ev('a', 10)]);
    await d.advanceWatermark(19);
    expect(out(d)).toEqual(['a[0,20)=0,10']);
    expect(await d.state('window-0', 'a')).toBeUndefined();
    await d.send([ev('a', 20)]);
    expect(await sessions(d, 'a')).toEqual([[20, 30]]);
    // [9,19) is already late and touches nothing live.
    await d.send([ev('a', 9)]);
    expect(late(d)).toEqual([e('a', 9)]);
    await d.advanceWatermark(29);
    expect(out(d)).toEqual(['a[0,20)=0,10', 'a[20,30)=20']);
  });

  it("a checkpoint with exact session timers (end-1 and end-1+lateness, as format 2 held them) fires as Flink's", async () => {
    // What a job checkpointed by an earlier version holds: the same state, and timers exactly at
    // the sessions' ends and cleanups instead of alarms.
    const plan = compile(
      collectingPipeline(session({ gap: 10 }), { watermarks: boundedOutOfOrderness(100), lateness: 20 }),
    );
    const shard = 'shardId-000000000000';
    const backend = new MemoryBackend();
    const lease = await backend.acquireLease(shard, 'a', 0, 1e12);
    const records = (events: Array<[string, number]>, from: number): SourceRecord[] =>
      events.map(([k, ts], i) => ({
        data: JSON.stringify({ k, ts, v: ts }),
        partitionKey: k,
        sequenceNumber: String(from + i).padStart(21, '0'),
        arrivalTime: 0,
      }));
    const first = new ShardTask(plan, shard);
    // a: [0,15) and [30,40); b: [2,17); c: [20,30). The watermark stays at 30 - 100 - 1.
    const r1 = await first.processBatch(
      records(
        [
          ['a', 0],
          ['b', 2],
          ['a', 5],
          ['b', 7],
          ['c', 20],
          ['a', 30],
        ],
        1,
      ),
      backend,
      0,
    );
    await backend.commit(lease, r1);
    expect(r1.outputs).toEqual([]);
    const inline = await withInlineTimers((await backend.readCheckpoint(shard))!, backend);
    const exact = (time: number, key: string, namespace: number): TimerSpec => ({
      operator: 'window-0',
      domain: 'event',
      time,
      key,
      namespace,
    });
    const restored = new ShardTask(plan, {
      ...inline,
      timers: [
        ...[exact(14, 'a', 0), exact(16, 'b', 2), exact(29, 'c', 20), exact(34, 'a', 0)],
        ...[exact(36, 'b', 2), exact(39, 'a', 30), exact(49, 'c', 20), exact(59, 'a', 30)],
      ],
    });
    // b@10 extends [2,17) to [2,20): its timer at 16 moves on to 19.
    const r2 = await restored.processBatch(records([['b', 10]], 7), backend, 0);
    await backend.commit(lease, r2);
    const r3 = await restored.processWatermark(MAX_WATERMARK, backend, 0);
    expect([...r2.outputs, ...r3.outputs].map((o) => o.value)).toEqual([
      'a[0,15)=0,5',
      'b[2,20)=2,7,10',
      'c[20,30)=20',
      'a[30,40)=30',
    ]);
    expect(await withInlineTimers(r3.checkpoint, backend)).toMatchObject({ timers: [] });
  });

  it('session with reduce and with a merging aggregate (count)', async () => {
    const p = pipeline('sessions');
    const keyed = p
      .source<Ev>()
      .withTimestamps((x) => x.ts, boundedOutOfOrderness(1000))
      .keyBy((x) => x.k);
    keyed
      .window(session({ gap: 10 }))
      .reduce((a, b) => ({ k: a.k, ts: Math.min(a.ts, b.ts), v: a.v + b.v }))
      .sink('reduced');
    keyed
      .window(session({ gap: 10 }))
      .aggregate(count<Ev>(), ({ key, window, result }) => `${key}[${window.start},${window.end})#${result}`)
      .sink('counted');
    const d = new TestDriver(p);
    // a: [0,10) and [20,40) (30 touches [20,30)); then 10 touches both: one session [0,40).
    await d.send([ev('a', 0, 1), ev('a', 20, 2), ev('a', 30, 4), ev('a', 10, 8), ev('b', 3, 16)]);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(d.values('reduced')).toEqual([
      { key: 'b', window: { start: 3, end: 13 }, result: { k: 'b', ts: 3, v: 16 } },
      { key: 'a', window: { start: 0, end: 40 }, result: { k: 'a', ts: 0, v: 15 } },
    ]);
    expect(d.values('counted')).toEqual(['b[3,13)#1', 'a[0,40)#4']);
  });
});

describe('early firings (earlyFiring)', () => {
  /** key -> window -> collect, early firings every `every` ms; outputs `key[start,end)=values` plus ` early`. */
  function early(assigner: WindowAssigner, every: number, o: Options = {}): TestDriver {
    const p = pipeline('early');
    const w = p
      .source<Ev>()
      .withTimestamps((x) => x.ts, o.watermarks ?? boundedOutOfOrderness(0))
      .keyBy((x) => x.k)
      .window(assigner)
      .earlyFiring(every);
    if (o.lateness !== undefined) w.allowedLateness(o.lateness);
    w.aggregate(collect<Ev>(), (r) => `${show(r)}${r.early === true ? ' early' : ''}`).sink('out');
    return new TestDriver(p, { shards: o.shards ?? 1 });
  }

  it('fires the contents so far at start + k*interval - 1 before the end, then the end firing', async () => {
    const d = early(tumbling({ size: 10 }), 3, { watermarks: boundedOutOfOrderness(100) });
    await d.send([ev('a', 1), ev('a', 2)]);
    expect(await timers(d)).toEqual([
      [2, 'a', 0],
      [9, 'a', 0],
    ]);
    await d.advanceWatermark(1);
    expect(out(d)).toEqual([]);
    await d.advanceWatermark(2);
    expect(out(d)).toEqual(['a[0,10)=1,2 early']);
    await d.send([ev('a', 4)]);
    await d.advanceWatermark(5);
    // 8 is the last early firing: 11 is past the window's last millisecond (9).
    await d.advanceWatermark(8);
    await d.advanceWatermark(9);
    expect(out(d)).toEqual([
      'a[0,10)=1,2 early',
      'a[0,10)=1,2,4 early',
      'a[0,10)=1,2,4 early',
      'a[0,10)=1,2,4',
    ]);
    expect(await timers(d)).toEqual([]);
    expect(await d.state('window-0', 'a')).toBeUndefined();
  });

  it('a watermark that jumps over several boundaries fires once, then at the next boundary after it', async () => {
    const d = early(tumbling({ size: 20 }), 3, { watermarks: boundedOutOfOrderness(100) });
    await d.send([ev('a', 1)]);
    await d.advanceWatermark(10);
    expect(out(d)).toEqual(['a[0,20)=1 early']);
    expect(await timers(d)).toEqual([
      [11, 'a', 0],
      [19, 'a', 0],
    ]);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(out(d)).toEqual(['a[0,20)=1 early', 'a[0,20)=1']);
  });

  it('sliding windows: each window fires early on its own boundaries after the watermark it opened at; restarts change nothing', async () => {
    const run = async (restart: boolean): Promise<string[]> => {
      const d = early(sliding({ size: 12, slide: 6 }), 4, { watermarks: boundedOutOfOrderness(100) });
      await d.send([ev('a', 1), ev('b', 3)]);
      await d.advanceWatermark(4);
      if (restart) d.restart();
      await d.send([ev('a', 7), ev('b', 8)]);
      await d.advanceWatermark(9);
      if (restart) d.restart();
      await d.advanceWatermark(MAX_WATERMARK);
      return out(d);
    };
    const outputs = await run(false);
    expect(outputs).toEqual([
      // Watermark 4: [-6,6)'s early firing at -3 and [0,12)'s at 3 (both windows opened at -100).
      'a[-6,6)=1 early',
      'b[-6,6)=3 early',
      'a[0,12)=1 early',
      'b[0,12)=3 early',
      // Watermark 9: [-6,6) ends at 5; [0,12) fires early at 7; [6,18), opened at watermark 4,
      // starts at its first boundary after it (9).
      'a[-6,6)=1',
      'b[-6,6)=3',
      'a[0,12)=1,7 early',
      'b[0,12)=3,8 early',
      'a[6,18)=7 early',
      'b[6,18)=8 early',
      // End of input: [6,18)'s early firing at 13 is skipped, as the watermark completes it.
      'a[0,12)=1,7',
      'b[0,12)=3,8',
      'a[6,18)=7',
      'b[6,18)=8',
    ]);
    expect(await run(true)).toEqual(outputs);
  });

  it('late firings within the allowed lateness stay as they are (no early firing after the end)', async () => {
    const d = early(tumbling({ size: 10 }), 4, { lateness: 5 });
    // a@5 raises the watermark to 4 once it is added: the early firing at 3 includes it.
    await d.send([ev('a', 1), ev('a', 5)]);
    expect(out(d)).toEqual(['a[0,10)=1,5 early']);
    // The watermark jumps to 11: the early firing due at 7 is skipped, the end firing follows.
    await d.send([ev('a', 12)]);
    expect(out(d)).toEqual(['a[0,10)=1,5 early', 'a[0,10)=1,5']);
    await d.send([ev('a', 2)]);
    expect(out(d)).toEqual(['a[0,10)=1,5 early', 'a[0,10)=1,5', 'a[0,10)=1,2,5']);
  });

  it('is refused for session windows, non-positive intervals and intervals not shorter than the window', () => {
    const keyed = () =>
      pipeline('bad')
        .source<Ev>()
        .withTimestamps((x) => x.ts, monotonic())
        .keyBy((x) => x.k);
    expect(() =>
      keyed()
        .window(session({ gap: 10 }))
        .earlyFiring(5),
    ).toThrow(/earlyFiring is supported for tumbling and sliding windows only/);
    expect(() =>
      keyed()
        .window(tumbling({ size: 10 }))
        .earlyFiring(0),
    ).toThrow(
      'earlyFiring interval must be a whole number of milliseconds from 1 to 100000000000000 (about 3,170 years); received 0',
    );
    expect(() =>
      keyed()
        .window(sliding({ size: 10, slide: 5 }))
        .earlyFiring(10),
    ).toThrow(/earlyFiring interval \(10 ms\) must be shorter than the window \(10 ms\)/);
  });
});

describe('offsets and negative window starts', () => {
  it('tumbling with a positive offset', async () => {
    const d = collecting(tumbling({ size: 10, offset: 3 }), { watermarks: boundedOutOfOrderness(100) });
    await d.send([ev('a', 2), ev('a', 3), ev('a', 12), ev('a', 13)]);
    await d.advanceWatermark(1);
    expect(out(d)).toEqual([]);
    await d.advanceWatermark(2);
    expect(out(d)).toEqual(['a[-7,3)=2']);
    await d.advanceWatermark(11);
    expect(out(d)).toEqual(['a[-7,3)=2']);
    await d.advanceWatermark(12);
    expect(out(d)).toEqual(['a[-7,3)=2', 'a[3,13)=3,12']);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(out(d)).toEqual(['a[-7,3)=2', 'a[3,13)=3,12', 'a[13,23)=13']);
  });

  it('tumbling with a negative offset', async () => {
    const d = collecting(tumbling({ size: 10, offset: -3 }), { watermarks: boundedOutOfOrderness(100) });
    await d.send([ev('a', -3), ev('a', 6), ev('a', 7), ev('a', -4)]);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(out(d)).toEqual(['a[-13,-3)=-4', 'a[-3,7)=-3,6', 'a[7,17)=7']);
  });

  it('negative timestamps: windows [-20,-10) and [-10,0) fire at -11 and -1', async () => {
    const d = collecting(tumbling({ size: 10 }), { watermarks: boundedOutOfOrderness(100) });
    await d.send([ev('a', -11), ev('a', -10), ev('a', -1), ev('a', 0)]);
    await d.advanceWatermark(-12);
    expect(out(d)).toEqual([]);
    await d.advanceWatermark(-11);
    expect(out(d)).toEqual(['a[-20,-10)=-11']);
    await d.advanceWatermark(-2);
    expect(out(d)).toEqual(['a[-20,-10)=-11']);
    await d.advanceWatermark(-1);
    expect(out(d)).toEqual(['a[-20,-10)=-11', 'a[-10,0)=-10,-1']);
    await d.advanceWatermark(9);
    expect(out(d)).toEqual(['a[-20,-10)=-11', 'a[-10,0)=-10,-1', 'a[0,10)=0']);
  });

  it('negative timestamps drive the watermark and lateness', async () => {
    const d = collecting(tumbling({ size: 10 }), { lateness: 10 });
    await d.send([ev('a', -15), ev('a', -5)]);
    expect(await d.watermark()).toBe(-6);
    expect(out(d)).toEqual(['a[-20,-10)=-15']);
    await d.send([ev('a', -12)]);
    // -11 + 10 = -1 > -6: re-fired with everything.
    expect(out(d)).toEqual(['a[-20,-10)=-15', 'a[-20,-10)=-15,-12']);
    expect(await timers(d)).toEqual([
      [-1, 'a', -20],
      [-1, 'a', -10],
      [9, 'a', -10],
    ]);
    await d.send([ev('a', 0)]);
    expect(await d.watermark()).toBe(-1);
    expect(out(d)).toEqual(['a[-20,-10)=-15', 'a[-20,-10)=-15,-12', 'a[-10,0)=-5']);
    expect(await alignedStarts(d, 'a')).toEqual([-10, 0]);
    await d.send([ev('a', -13)]);
    expect(late(d)).toEqual([e('a', -13)]);
  });
});

describe("timestamps at the ends of a Date's range", () => {
  // Found by the model-based test (window-model.test.ts): a window's timers (end - 1, and
  // end - 1 + lateness) lie up to two durations past its element, so past ±8.64e15 near the end
  // of the range, where the timer check used to refuse them and dead-letter the element.
  const top = MAX_EVENT_TIME - 1;
  const dead = (d: TestDriver): unknown[] => d.values(DEAD_LETTER_SINK);

  it('tumbling windows with the longest size and lateness fire and clean up', async () => {
    const size = MAX_DURATION;
    const d = collecting(tumbling({ size }), { lateness: MAX_DURATION });
    await d.send([ev('a', top), ev('a', -MAX_EVENT_TIME)]);
    const start = top - (top % size);
    await d.advanceWatermark(start + size - 2);
    expect(out(d)).toEqual([]);
    await d.advanceWatermark(start + size - 1);
    expect(out(d)).toEqual([`a[${start},${start + size})=${top}`]);
    await d.send([ev('a', top - 1)]); // within the lateness: fires again
    expect(out(d)).toHaveLength(2);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(dead(d)).toEqual([]);
    expect(await timers(d)).toEqual([]);
  });

  it('sliding and session windows past the end of the range', async () => {
    const s = collecting(sliding({ size: MAX_DURATION, slide: MAX_DURATION / 4 }), { lateness: 7 });
    const g = collecting(session({ gap: MAX_DURATION }), { lateness: MAX_DURATION });
    for (const d of [s, g]) {
      await d.send([ev('a', top - 3), ev('a', top)]);
      await d.advanceWatermark(MAX_WATERMARK);
      expect(dead(d)).toEqual([]);
    }
    expect(out(s)).toHaveLength(4);
    expect(out(g)).toEqual([`a[${top - 3},${top + MAX_DURATION})=${top - 3},${top}`]);
  });

  it('process-function timers up to two durations past the range are accepted', async () => {
    const p = pipeline('edge-timers');
    p.source<Ev>()
      .withTimestamps((x) => x.ts, boundedOutOfOrderness(0))
      .keyBy((x) => x.k)
      .process({
        processElement(_x: Ev, ctx) {
          ctx.timers.registerEventTimeTimer(ctx.timestamp + 2 * MAX_DURATION);
          ctx.timers.registerEventTimeTimer(-ctx.timestamp - 2 * MAX_DURATION);
        },
        onTimer(t, ctx) {
          ctx.emit(t.time);
        },
      })
      .sink('out');
    const d = new TestDriver(p);
    await d.send([ev('a', MAX_EVENT_TIME)]);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(dead(d)).toEqual([]);
    expect(d.values('out')).toEqual([-MAX_EVENT_TIME - 2 * MAX_DURATION, MAX_EVENT_TIME + 2 * MAX_DURATION]);
  });
});

describe('late side output', () => {
  it("goes to the 'floe.late' sink by default", async () => {
    const d = collecting(tumbling({ size: 10 }));
    await d.send([ev('a', 10), ev('a', 3)]);
    expect(DEFAULT_LATE_SINK).toBe('floe.late');
    expect(d.outputs('floe.late').map((o) => o.value)).toEqual([e('a', 3)]);
  });

  it('sideOutputLateData names the side output and its sink', async () => {
    const d = collecting(tumbling({ size: 10 }), { lateName: 'late-events' });
    await d.send([ev('a', 10), ev('a', 3), ev('a', 12)]);
    expect(d.values('late-events')).toEqual([e('a', 3)]);
    expect(d.outputs(DEFAULT_LATE_SINK)).toEqual([]);
  });

  it('lateData() consumes the side output as a stream (nothing goes to the default sink)', async () => {
    const p = pipeline('late-stream');
    const counts = p
      .source<Ev>()
      .withTimestamps((x) => x.ts, monotonic())
      .keyBy((x) => x.k)
      .window(tumbling({ size: 10 }))
      .aggregate(count<Ev>());
    counts.sink('counts');
    counts
      .lateData()
      .map((x) => `late ${(x as Ev).k}@${(x as Ev).ts}`)
      .sink('late-out');
    const d = new TestDriver(p);
    await d.send([ev('a', 1), ev('a', 10), ev('a', 2), ev('b', 9), ev('a', 11)]);
    expect(d.values('counts')).toEqual([{ key: 'a', window: { start: 0, end: 10 }, result: 1 }]);
    expect(d.values('late-out')).toEqual(['late a@2', 'late b@9']);
    expect(d.outputs(DEFAULT_LATE_SINK)).toEqual([]);
  });

  it('lateData() follows the name given with sideOutputLateData', async () => {
    const p = pipeline('late-named');
    const result = p
      .source<Ev>()
      .withTimestamps((x) => x.ts, monotonic())
      .keyBy((x) => x.k)
      .window(session({ gap: 5 }))
      .sideOutputLateData('too-late')
      .aggregate(count<Ev>());
    result.sink('counts');
    result.lateData().sink('late-copy');
    const d = new TestDriver(p);
    await d.send([ev('a', 20), ev('a', 2), ev('a', 15)]);
    expect(d.values('late-copy')).toEqual([e('a', 2)]);
    expect(d.outputs('too-late')).toEqual([]);
    expect(d.outputs(DEFAULT_LATE_SINK)).toEqual([]);
    await d.advanceWatermark(MAX_WATERMARK);
    expect(d.values('counts')).toEqual([{ key: 'a', window: { start: 15, end: 25 }, result: 2 }]);
  });
});

describe('watermarks', () => {
  it('bounded out-of-orderness: WM = max ts - bound - 1, never decreasing', async () => {
    const d = collecting(tumbling({ size: 1000 }), { watermarks: boundedOutOfOrderness(100) });
    expect(await d.watermark()).toBe(Number.NEGATIVE_INFINITY);
    await d.send([ev('a', 1000)]);
    expect(await d.watermark()).toBe(899);
    await d.send([ev('a', 950)]);
    expect(await d.watermark()).toBe(899);
    await d.send([ev('a', 1200), ev('a', 1100)]);
    expect(await d.watermark()).toBe(1099);
    const cp = await d.checkpoint();
    expect(cp?.maxTimestamp).toBe(1200);
  });

  it('monotonic: WM = max ts - 1', async () => {
    const d = collecting(tumbling({ size: 1000 }), { watermarks: monotonic() });
    await d.send([ev('a', 1000)]);
    expect(await d.watermark()).toBe(999);
  });

  it('bounded out-of-orderness fires a window once max ts - bound - 1 >= end-1', async () => {
    const d = collecting(tumbling({ size: 10 }), { watermarks: boundedOutOfOrderness(5) });
    await d.send([ev('a', 3), ev('a', 14)]);
    expect(await d.watermark()).toBe(8);
    // Out of order but within the bound: still in time.
    await d.send([ev('a', 9)]);
    expect(out(d)).toEqual([]);
    await d.send([ev('a', 15)]);
    expect(await d.watermark()).toBe(9);
    expect(out(d)).toEqual(['a[0,10)=3,9']);
    expect(late(d)).toEqual([]);
  });

  it('records of one batch see the watermark advance after each record', async () => {
    const oneBatch = collecting(tumbling({ size: 10 }));
    await oneBatch.send([ev('a', 1), ev('a', 10), ev('a', 2), ev('a', 20)]);
    const separate = collecting(tumbling({ size: 10 }));
    for (const r of [ev('a', 1), ev('a', 10), ev('a', 2), ev('a', 20)]) await separate.send([r]);
    expect(out(oneBatch)).toEqual(['a[0,10)=1', 'a[10,20)=10']);
    expect(late(oneBatch)).toEqual([e('a', 2)]);
    expect(out(separate)).toEqual(out(oneBatch));
    expect(late(separate)).toEqual(late(oneBatch));
  });
});

describe('multiple shards', () => {
  it('keep independent watermarks', async () => {
    const d = collecting(tumbling({ size: 10 }), { shards: 2 });
    const [s0, s1] = d.shardIds as [string, string];
    await d.send([
      { ...ev('a', 5), shard: s0 },
      { ...ev('b', 5), shard: s1 },
      { ...ev('a', 25), shard: s0 },
    ]);
    expect(await d.watermark(s0)).toBe(24);
    expect(await d.watermark(s1)).toBe(4);
    expect(out(d)).toEqual(['a[0,10)=5']);
    expect(await timers(d, s1)).toEqual([[9, 'b', 0]]);
    expect(await timers(d, s0)).toEqual([[29, 'a', 20]]);

    // ts=6 is in time on shard 1 (WM 4) although shard 0 is far ahead.
    await d.send([{ ...ev('b', 6), shard: s1 }]);
    expect(late(d)).toEqual([]);
    // ts=6 is late on shard 0.
    await d.send([{ ...ev('c', 6), shard: s0 }]);
    expect(late(d)).toEqual([e('c', 6)]);

    await d.advanceWatermark(9, s1);
    expect(out(d)).toEqual(['a[0,10)=5', 'b[0,10)=5,6']);
    expect(await d.watermark(s0)).toBe(24);
    await d.advanceWatermark(29);
    expect(out(d)).toEqual(['a[0,10)=5', 'b[0,10)=5,6', 'a[20,30)=25']);
    expect(await d.watermark(s1)).toBe(29);
  });

  it('routes by partition key hash by default; a shard without records keeps WM -Infinity', async () => {
    const d = collecting(tumbling({ size: 10 }), { shards: 4 });
    await d.send([ev('a', 15)]);
    const owner = d.shardFor('a');
    expect(await d.watermark(owner)).toBe(14);
    for (const id of d.shardIds.filter((s) => s !== owner)) {
      expect(await d.watermark(id)).toBe(Number.NEGATIVE_INFINITY);
    }
  });
});

describe('a restore into a pipeline with another allowed lateness (a savepoint replay)', () => {
  const shard = 'shardId-000000000000';
  const records = (events: Array<[string, number]>): SourceRecord[] =>
    events.map(([k, ts], i) => ({
      data: JSON.stringify({ k, ts, v: ts }),
      partitionKey: k,
      sequenceNumber: String(i + 1).padStart(21, '0'),
      arrivalTime: 0,
    }));
  const cases: Array<[string, WindowAssigner, string[]]> = [
    ['tumbling', tumbling({ size: 10 }), ['a[0,10)=0,5', 'b[30,40)=30']],
    ['session', session({ gap: 10 }), ['a[0,15)=0,5', 'b[30,40)=30']],
  ];
  for (const [kind, assigner, expected] of cases) {
    for (const [before, after] of [
      [0, 30],
      [30, 0],
      [30, 8],
      [8, 30],
    ] as const) {
      it(`${kind}: from ${before} to ${after} ms, each window fires once and its state and timers are removed`, async () => {
        const backend = new MemoryBackend();
        const lease = await backend.acquireLease(shard, 'a', 0, 1e12);
        const planOf = (lateness: number) =>
          compile(collectingPipeline(assigner, { watermarks: boundedOutOfOrderness(0), lateness }));
        // a's window fires before the restore (the watermark reaches 29), b's after it.
        const r0 = await new ShardTask(planOf(before), shard).processBatch(
          records([
            ['a', 0],
            ['a', 5],
            ['b', 30],
          ]),
          backend,
          0,
        );
        await backend.commit(lease, r0);
        const restored = new ShardTask(planOf(after), (await backend.readCheckpoint(shard))!);
        const r1 = await restored.processWatermark(MAX_WATERMARK, backend, 0);
        await backend.commit(lease, r1);
        expect([...r0.outputs, ...r1.outputs].map((o) => o.value)).toEqual(expected);
        expect(await withInlineTimers(r1.checkpoint, backend)).toMatchObject({ timers: [] });
        expect([...(await backend.getMany(['window-0/"a"', 'window-0/"b"'])).keys()]).toEqual([]);
      });
    }
  }
});

describe('restart between steps', () => {
  type Step = (d: TestDriver) => Promise<void>;
  const scenarios: Array<[string, () => TestDriver, Step[]]> = [
    [
      'tumbling with lateness',
      () => collecting(tumbling({ size: 10, offset: 2 }), { lateness: 5 }),
      [
        (d) => d.send([ev('a', 3), ev('b', 4)]),
        (d) => d.send([ev('a', 13)]),
        (d) => d.send([ev('a', 5), ev('b', 11)]),
        (d) => d.advanceWatermark(16),
        (d) => d.send([ev('a', 6), ev('b', 12)]),
        (d) => d.advanceWatermark(MAX_WATERMARK),
        (d) => d.send([ev('a', 100)]),
      ],
    ],
    [
      'sliding',
      () => collecting(sliding({ size: 10, slide: 5 }), { watermarks: boundedOutOfOrderness(3) }),
      [
        (d) => d.send([ev('a', -7), ev('a', 1)]),
        (d) => d.send([ev('b', 8), ev('a', 12)]),
        (d) => d.send([ev('a', 4), ev('a', 9)]),
        (d) => d.advanceWatermark(30),
        (d) => d.send([ev('b', 33)]),
      ],
    ],
    [
      'session with lateness',
      () => collecting(session({ gap: 10 }), { lateness: 20, watermarks: boundedOutOfOrderness(5) }),
      [
        (d) => d.send([ev('a', 0), ev('a', 13), ev('b', 2)]),
        (d) => d.advanceWatermark(22),
        (d) => d.send([ev('a', 5)]),
        (d) => d.send([ev('a', 40), ev('b', 70)]),
        (d) => d.send([ev('a', 1), ev('b', 3)]),
        (d) => d.advanceWatermark(MAX_WATERMARK),
      ],
    ],
  ];

  it.each(scenarios)('%s: same outputs, state, timers and watermark', async (_name, make, steps) => {
    const plain = make();
    const restarted = make();
    for (const step of steps) {
      await step(plain);
      await step(restarted);
      restarted.restart();
      expect(await restarted.timers()).toEqual(await plain.timers());
      expect(await restarted.watermark()).toBe(await plain.watermark());
      for (const key of ['a', 'b']) {
        expect(await restarted.state('window-0', key)).toEqual(await plain.state('window-0', key));
      }
    }
    expect(restarted.outputs()).toEqual(plain.outputs());
    expect(plain.values('out').length).toBeGreaterThan(0);
  });

  it('session with lateness: exact outputs across restarts', async () => {
    const d = collecting(session({ gap: 10 }), { lateness: 20, watermarks: boundedOutOfOrderness(5) });
    await d.send([ev('a', 0), ev('a', 13), ev('b', 2)]);
    d.restart();
    await d.advanceWatermark(22);
    d.restart();
    await d.send([ev('a', 5)]);
    d.restart();
    await d.send([ev('a', 40), ev('b', 70)]);
    d.restart();
    await d.send([ev('a', 1), ev('b', 3)]);
    d.restart();
    await d.advanceWatermark(MAX_WATERMARK);
    expect(out(d)).toEqual([
      'a[0,10)=0',
      'b[2,12)=2',
      'a[13,23)=13',
      'a[0,23)=0,5,13',
      'a[40,50)=40',
      'b[70,80)=70',
    ]);
    // After a@40 and b@70 the watermark is 64: a@1 ([1,11) merges into [0,23), 22+20 = 42 <= 64, gone)
    // and b@3 (b's session cleaned up at 31) are late.
    expect(late(d)).toEqual([e('a', 1), e('b', 3)]);
  });
});
