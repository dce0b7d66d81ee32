/**
 * The keyed process function API (Flink's KeyedProcessFunction): keyed state (value, map,
 * list, with optional TTL), event-time and processing-time timers, the context, side outputs,
 * and persistence of state and timers across a restart.
 */
import { describe, expect, it } from 'vitest';
import { type DataStream, passthroughDeserializer, pipeline } from './dsl.ts';
import type { KeyedProcessFunction, ProcessContext } from './processor.ts';
import {
  listState,
  type MapStateDescriptor,
  mapState,
  type StateKey,
  type StateSpec,
  type ValueStateDescriptor,
  valueState,
} from './state.ts';
import { type DriverRecord, TestDriver } from './testing/test-driver.ts';
import { MAX_WATERMARK } from './time.ts';
import { boundedOutOfOrderness } from './watermarks.ts';

/** A test event: key, event time and a command for the process function. */
interface Ev {
  readonly k: StateKey;
  readonly ts: number;
  readonly op?: string;
  readonly v?: unknown;
  /** Timer time for timer commands. */
  readonly at?: number;
  readonly ns?: string | number;
}

interface Options {
  /** Assign event time from `ts` (bounded out-of-orderness 0). @default true */
  readonly timestamps?: boolean;
}

function driverFor<Out, S extends StateSpec>(
  fn: KeyedProcessFunction<Ev, Out, S>,
  options: Options = {},
): TestDriver {
  const p = pipeline('process-test');
  let stream: DataStream<Ev> = p.source<Ev>({ deserializer: passthroughDeserializer<Ev>() });
  if (options.timestamps !== false) stream = stream.withTimestamps((e) => e.ts, boundedOutOfOrderness(0));
  stream
    .keyBy((e) => e.k)
    .process(fn)
    .sink('out');
  return new TestDriver(p);
}

const rec = (e: Ev, arrival?: number): DriverRecord =>
  arrival === undefined
    ? { partitionKey: String(e.k), data: e }
    : { partitionKey: String(e.k), data: e, arrival };

describe('ValueState', () => {
  const counter = {
    state: { count: valueState<number>() },
    processElement(e: Ev, ctx: ProcessContext<unknown, { count: ReturnType<typeof valueState<number>> }>) {
      const count = ctx.state.count;
      if (e.op === 'clear') count.clear();
      else if (e.op === 'add') count.update((count.value() ?? 0) + (e.v as number));
      ctx.emit({ k: ctx.key, count: count.value() ?? null });
    },
  };

  it('reads, updates and clears the value of the current key', async () => {
    const driver = driverFor(counter);
    await driver.send([
      rec({ k: 'a', ts: 1, op: 'add', v: 1 }),
      rec({ k: 'a', ts: 2, op: 'add', v: 2 }),
      rec({ k: 'a', ts: 3, op: 'get' }),
      rec({ k: 'a', ts: 4, op: 'clear' }),
      rec({ k: 'a', ts: 5, op: 'add', v: 5 }),
    ]);
    expect(driver.values('out')).toEqual([
      { k: 'a', count: 1 },
      { k: 'a', count: 3 },
      { k: 'a', count: 3 },
      { k: 'a', count: null },
      { k: 'a', count: 5 },
    ]);
    expect(await driver.state('process-0', 'a')).toEqual({ count: [5] });
  });

  it('deletes the stored entry when the last state of a key is cleared', async () => {
    const driver = driverFor(counter);
    await driver.send([rec({ k: 'a', ts: 1, op: 'add', v: 7 })]);
    expect(await driver.state('process-0', 'a')).toEqual({ count: [7] });
    await driver.send([rec({ k: 'a', ts: 2, op: 'clear' })]);
    expect(await driver.state('process-0', 'a')).toBeUndefined();
    expect(driver.store.entries().size).toBe(0);
  });

  it('isolates keys, including the number 1 from the string "1"', async () => {
    const driver = driverFor(counter);
    await driver.send([
      rec({ k: 'a', ts: 1, op: 'add', v: 1 }),
      rec({ k: 'b', ts: 1, op: 'add', v: 10 }),
      rec({ k: 1, ts: 1, op: 'add', v: 100 }),
      rec({ k: '1', ts: 1, op: 'add', v: 1000 }),
      rec({ k: 'a', ts: 2, op: 'add', v: 1 }),
      rec({ k: 'b', ts: 2, op: 'clear' }),
      rec({ k: 1, ts: 2, op: 'add', v: 100 }),
    ]);
    expect(driver.values('out')).toEqual([
      { k: 'a', count: 1 },
      { k: 'b', count: 10 },
      { k: 1, count: 100 },
      { k: '1', count: 1000 },
      { k: 'a', count: 2 },
      { k: 'b', count: null },
      { k: 1, count: 200 },
    ]);
    expect(await driver.state('process-0', 'a')).toEqual({ count: [2] });
    expect(await driver.state('process-0', 'b')).toBeUndefined();
    expect(await driver.state('process-0', 1)).toEqual({ count: [200] });
    expect(await driver.state('process-0', '1')).toEqual({ count: [1000] });
  });

  it('names like Object.prototype members (constructor, toString) are states like any other, across a restart', async () => {
    const driver = driverFor({
      state: {
        constructor: valueState<number>(),
        toString: mapState<string, number>(),
        other: valueState<number>(),
      },
      processElement(
        e: Ev,
        ctx: ProcessContext<
          unknown,
          {
            constructor: ValueStateDescriptor<number>;
            toString: MapStateDescriptor<string, number>;
            other: ValueStateDescriptor<number>;
          }
        >,
      ) {
        ctx.state.other.update(e.ts);
        if (e.ts === 2) ctx.state.constructor.update(7);
        ctx.emit([ctx.state.constructor.value() ?? null, ctx.state.toString.size, ctx.state.other.value()]);
      },
    } as unknown as KeyedProcessFunction<Ev, unknown>);
    await driver.send([rec({ k: 'a', ts: 1 })]);
    driver.restart();
    await driver.send([rec({ k: 'a', ts: 2 })]);
    driver.restart();
    await driver.send([rec({ k: 'a', ts: 3 })]);
    expect(driver.values('out')).toEqual([
      [null, 0, 1],
      [7, 0, 2],
      [7, 0, 3],
    ]);
  });

  it('persists across a restart', async () => {
    const driver = driverFor(counter);
    await driver.send([rec({ k: 'a', ts: 1, op: 'add', v: 4 }), rec({ k: 'b', ts: 1, op: 'add', v: 6 })]);
    driver.restart();
    await driver.send([rec({ k: 'a', ts: 2, op: 'add', v: 1 }), rec({ k: 'b', ts: 2, op: 'get' })]);
    driver.restart();
    await driver.send([rec({ k: 'a', ts: 3, op: 'get' })]);
    expect(driver.values('out')).toEqual([
      { k: 'a', count: 4 },
      { k: 'b', count: 6 },
      { k: 'a', count: 5 },
      { k: 'b', count: 6 },
      { k: 'a', count: 5 },
    ]);
  });

  it('stores null and objects, and update(undefined) clears', async () => {
    const driver = driverFor({
      state: { v: valueState<unknown>() },
      processElement(e: Ev, ctx) {
        if (e.op === 'set') ctx.state.v.update(e.v);
        ctx.emit({ has: ctx.state.v.value() !== undefined, v: ctx.state.v.value() ?? 'absent' });
      },
    });
    await driver.send([
      rec({ k: 'a', ts: 1, op: 'set', v: null }),
      rec({ k: 'a', ts: 2, op: 'set', v: { nested: [1, 'x'] } }),
    ]);
    driver.restart();
    await driver.send([rec({ k: 'a', ts: 3, op: 'get' }), rec({ k: 'a', ts: 4, op: 'set', v: undefined })]);
    expect(driver.values('out')).toEqual([
      { has: true, v: 'absent' },
      { has: true, v: { nested: [1, 'x'] } },
      { has: true, v: { nested: [1, 'x'] } },
      { has: false, v: 'absent' },
    ]);
    expect(await driver.state('process-0', 'a')).toBeUndefined();
  });
});

describe('MapState', () => {
  const mapFn = {
    state: { m: mapState<StateKey, unknown>() },
    processElement(
      e: Ev,
      ctx: ProcessContext<unknown, { m: ReturnType<typeof mapState<StateKey, unknown>> }>,
    ) {
      const m = ctx.state.m;
      const [mk, mv] = (e.v ?? []) as [StateKey, unknown];
      if (e.op === 'put') m.put(mk, mv);
      else if (e.op === 'remove') m.remove(mk);
      else if (e.op === 'clear') m.clear();
      ctx.emit({
        k: ctx.key,
        entries: m.entries(),
        keys: m.keys(),
        values: m.values(),
        size: m.size,
        empty: m.isEmpty(),
        get: mk === undefined ? null : (m.get(mk) ?? null),
        has: mk === undefined ? null : m.has(mk),
      });
    },
  };

  it('puts, gets, removes, lists entries and clears', async () => {
    const driver = driverFor(mapFn);
    await driver.send([
      rec({ k: 'a', ts: 1, op: 'put', v: ['x', 1] }),
      rec({ k: 'a', ts: 2, op: 'put', v: ['y', { n: 2 }] }),
      rec({ k: 'a', ts: 3, op: 'put', v: ['x', 3] }),
      rec({ k: 'a', ts: 4, op: 'remove', v: ['y'] }),
      rec({ k: 'a', ts: 5, op: 'get', v: ['y'] }),
      rec({ k: 'a', ts: 6, op: 'clear', v: ['x'] }),
    ]);
    expect(driver.values('out')).toEqual([
      { k: 'a', entries: [['x', 1]], keys: ['x'], values: [1], size: 1, empty: false, get: 1, has: true },
      {
        k: 'a',
        entries: [
          ['x', 1],
          ['y', { n: 2 }],
        ],
        keys: ['x', 'y'],
        values: [1, { n: 2 }],
        size: 2,
        empty: false,
        get: { n: 2 },
        has: true,
      },
      {
        k: 'a',
        entries: [
          ['x', 3],
          ['y', { n: 2 }],
        ],
        keys: ['x', 'y'],
        values: [3, { n: 2 }],
        size: 2,
        empty: false,
        get: 3,
        has: true,
      },
      { k: 'a', entries: [['x', 3]], keys: ['x'], values: [3], size: 1, empty: false, get: null, has: false },
      { k: 'a', entries: [['x', 3]], keys: ['x'], values: [3], size: 1, empty: false, get: null, has: false },
      { k: 'a', entries: [], keys: [], values: [], size: 0, empty: true, get: null, has: false },
    ]);
    expect(await driver.state('process-0', 'a')).toBeUndefined();
  });

  it('refuses NaN and ±Infinity map keys (stored as JSON they would read back as null)', async () => {
    const driver = driverFor(mapFn);
    await driver.send([
      rec({ k: 'a', ts: 1, op: 'put', v: [Number.NaN, 1] }),
      rec({ k: 'a', ts: 2, op: 'put', v: [Number.POSITIVE_INFINITY, 1] }),
      rec({ k: 'a', ts: 3, op: 'put', v: [2, 'two'] }),
    ]);
    expect(
      driver
        .values<{ sequenceNumber: string; message: string }>('floe.dead-letter')
        .map((l) => [l.sequenceNumber, l.message]),
    ).toEqual([
      ['1', 'StateSerializationError: map state keys must be strings or finite numbers; received NaN'],
      ['2', 'StateSerializationError: map state keys must be strings or finite numbers; received Infinity'],
    ]);
    driver.restart();
    await driver.send([rec({ k: 'a', ts: 4, op: 'get', v: [2] })]);
    expect(driver.values('out').at(-1)).toMatchObject({ entries: [[2, 'two']], get: 'two' });
  });

  it('put(key, undefined) removes the entry, as before and after a restart', async () => {
    const driver = driverFor(mapFn);
    await driver.send([
      rec({ k: 'a', ts: 1, op: 'put', v: ['x', 1] }),
      rec({ k: 'a', ts: 2, op: 'put', v: ['x', undefined] }),
    ]);
    const removed = { k: 'a', entries: [], size: 0, get: null, has: false };
    expect(driver.values('out').at(-1)).toMatchObject(removed);
    expect(await driver.state('process-0', 'a')).toBeUndefined();
    driver.restart();
    await driver.send([rec({ k: 'a', ts: 3, op: 'get', v: ['x'] })]);
    expect(driver.values('out').at(-1)).toMatchObject(removed);
  });

  it('isolates keys and keeps number and string map keys apart across a restart', async () => {
    const driver = driverFor(mapFn);
    await driver.send([
      rec({ k: 'a', ts: 1, op: 'put', v: [1, 'number one'] }),
      rec({ k: 'a', ts: 1, op: 'put', v: ['1', 'string one'] }),
      rec({ k: 'b', ts: 1, op: 'put', v: ['z', true] }),
    ]);
    expect(await driver.state('process-0', 'a')).toEqual({
      m: [
        [1, 'number one'],
        ['1', 'string one'],
      ],
    });
    expect(await driver.state('process-0', 'b')).toEqual({ m: [['z', true]] });
    driver.restart();
    await driver.send([
      rec({ k: 'a', ts: 2, op: 'get', v: [1] }),
      rec({ k: 'b', ts: 2, op: 'get', v: ['1'] }),
    ]);
    expect(driver.values('out').slice(3)).toEqual([
      {
        k: 'a',
        entries: [
          [1, 'number one'],
          ['1', 'string one'],
        ],
        keys: [1, '1'],
        values: ['number one', 'string one'],
        size: 2,
        empty: false,
        get: 'number one',
        has: true,
      },
      {
        k: 'b',
        entries: [['z', true]],
        keys: ['z'],
        values: [true],
        size: 1,
        empty: false,
        get: null,
        has: false,
      },
    ]);
  });
});

describe("MapState with layout 'by-map-key' (the window operators' shared tables)", () => {
  type Spec = { m: ReturnType<typeof mapState<string, number>> };
  // Commands, in order, on map key "x" (and "y"): get / put / remove, and "fail" (throw: the
  // record is rolled back and dead-lettered). A put right after a get journals the value the get
  // read instead of looking it up again; these sequences check that a rollback still restores
  // what the map held before the record, whichever writes and reads came before it.
  const scripted = {
    state: { m: mapState<string, number>({ layout: 'by-map-key' }) },
    processElement(e: Ev, ctx: ProcessContext<unknown, Spec>) {
      const m = ctx.state.m;
      for (const cmd of e.v as string[]) {
        const [op, mk = 'x', n] = cmd.split(' ') as [string, string?, string?];
        if (op === 'get') m.get(mk);
        else if (op === 'inc') m.put(mk, (m.get(mk) ?? 0) + 1);
        else if (op === 'put') m.put(mk, Number(n));
        else if (op === 'remove') m.remove(mk);
        else if (op === 'fail') throw new Error('fail');
      }
      ctx.emit({ k: ctx.key, x: m.get('x') ?? null, y: m.get('y') ?? null });
    },
  };
  const run = async (records: string[][]) => {
    const driver = driverFor(scripted);
    await driver.send(records.map((v, i) => rec({ k: 'a', ts: i, v })));
    return driver;
  };

  it('read-modify-write, with and without a get first', async () => {
    const driver = await run([['inc', 'inc', 'inc y'], ['get', 'put x 7', 'get y', 'remove y'], ['put x 9']]);
    expect(driver.values('out')).toEqual([
      { k: 'a', x: 2, y: 1 },
      { k: 'a', x: 7, y: null },
      { k: 'a', x: 9, y: null },
    ]);
    expect(await driver.state('process-0', 'a')).toEqual({ m: [['x', 9]] });
  });

  it('a failed record changes nothing, though a value it read was written and rolled back', async () => {
    const driver = await run([
      ['put x 1'],
      // Writes 2, reads it, fails: x is 1 again, while the last get read 2.
      ['put x 2', 'get', 'fail'],
      // A put without a get, then a failure: the rollback must restore 1, not the 2 read above.
      ['put x 7', 'fail'],
      ['get'],
      // A get, a write of another entry, a put of the first, a remove, then a failure.
      ['get', 'put y 3', 'put x 4', 'remove', 'fail'],
      ['get'],
    ]);
    expect(driver.values('out')).toEqual([
      { k: 'a', x: 1, y: null },
      { k: 'a', x: 1, y: null },
      { k: 'a', x: 1, y: null },
    ]);
    expect(driver.values<{ reason: string }>('floe.dead-letter').map((d) => d.reason)).toEqual([
      'user-function',
      'user-function',
      'user-function',
    ]);
    expect(await driver.state('process-0', 'a')).toEqual({ m: [['x', 1]] });
  });
});

describe('ListState', () => {
  const listFn = {
    state: { l: listState<unknown>() },
    processElement(e: Ev, ctx: ProcessContext<unknown, { l: ReturnType<typeof listState<unknown>> }>) {
      const l = ctx.state.l;
      if (e.op === 'add') l.add(e.v);
      else if (e.op === 'update') l.update(e.v as unknown[]);
      else if (e.op === 'clear') l.clear();
      ctx.emit({ k: ctx.key, items: [...l.get()] });
    },
  };

  it('adds, replaces, clears, and update([]) clears', async () => {
    const driver = driverFor(listFn);
    await driver.send([
      rec({ k: 'a', ts: 1, op: 'add', v: 1 }),
      rec({ k: 'a', ts: 2, op: 'add', v: { two: 2 } }),
      rec({ k: 'a', ts: 3, op: 'add', v: 1 }),
      rec({ k: 'a', ts: 4, op: 'update', v: ['x', 'y'] }),
      rec({ k: 'b', ts: 4, op: 'add', v: 'b1' }),
      rec({ k: 'a', ts: 5, op: 'clear' }),
      rec({ k: 'a', ts: 6, op: 'add', v: 'z' }),
      rec({ k: 'a', ts: 7, op: 'update', v: [] }),
    ]);
    expect(driver.values('out')).toEqual([
      { k: 'a', items: [1] },
      { k: 'a', items: [1, { two: 2 }] },
      { k: 'a', items: [1, { two: 2 }, 1] },
      { k: 'a', items: ['x', 'y'] },
      { k: 'b', items: ['b1'] },
      { k: 'a', items: [] },
      { k: 'a', items: ['z'] },
      { k: 'a', items: [] },
    ]);
    expect(await driver.state('process-0', 'a')).toBeUndefined();
    expect(await driver.state('process-0', 'b')).toEqual({ l: ['b1'] });
  });

  it('update with something other than an array dead-letters the record, saying what it received', async () => {
    const driver = driverFor(listFn);
    await driver.send([
      rec({ k: 'a', ts: 1, op: 'add', v: 1 }),
      rec({ k: 'a', ts: 2, op: 'update', v: 5 }),
      rec({ k: 'a', ts: 3, op: 'update', v: 'xy' }),
    ]);
    expect(driver.values('out')).toEqual([{ k: 'a', items: [1] }]);
    const letters = driver.values<{ reason: string; message: string }>('floe.dead-letter');
    expect(letters.map((l) => [l.reason, l.message])).toEqual(
      ['5', '"xy"'].map((received) => [
        'user-function',
        `TypeError: list state update(values) needs an array; received ${received}. Use add(value) to append one value`,
      ]),
    );
    expect(await driver.state('process-0', 'a')).toEqual({ l: [1] });
  });

  it('persists across a restart', async () => {
    const driver = driverFor(listFn);
    await driver.send([rec({ k: 'a', ts: 1, op: 'add', v: 1 }), rec({ k: 'a', ts: 2, op: 'add', v: 2 })]);
    driver.restart();
    await driver.send([rec({ k: 'a', ts: 3, op: 'add', v: 3 })]);
    expect(driver.values('out').at(-1)).toEqual({ k: 'a', items: [1, 2, 3] });
    expect(await driver.state('process-0', 'a')).toEqual({ l: [1, 2, 3] });
  });
});

describe('state TTL (processing time since the last write)', () => {
  const ttlFn = {
    state: {
      last: valueState<unknown>({ ttl: 1000 }),
      seen: valueState<number>(),
    },
    processElement(
      e: Ev,
      ctx: ProcessContext<
        unknown,
        { last: ReturnType<typeof valueState<unknown>>; seen: ReturnType<typeof valueState<number>> }
      >,
    ) {
      if (e.op === 'set') ctx.state.last.update(e.v);
      if (e.op === 'touch') ctx.state.seen.update((ctx.state.seen.value() ?? 0) + 1);
      if (e.op === 'timer') ctx.timers.registerProcessingTimeTimer(e.at!);
      ctx.emit({ at: ctx.currentProcessingTime, last: ctx.state.last.value() ?? null });
    },
    onTimer(
      _t: unknown,
      ctx: ProcessContext<
        unknown,
        { last: ReturnType<typeof valueState<unknown>>; seen: ReturnType<typeof valueState<number>> }
      >,
    ) {
      ctx.emit({ timerAt: ctx.currentProcessingTime, last: ctx.state.last.value() ?? null });
    },
  };

  it('a value written at T is readable before T+ttl and absent from T+ttl (record arrival)', async () => {
    const driver = driverFor(ttlFn);
    await driver.send([rec({ k: 'a', ts: 1, op: 'set', v: 'x' }, 10_000)]);
    await driver.send([rec({ k: 'a', ts: 2, op: 'get' }, 10_999)]);
    await driver.send([rec({ k: 'a', ts: 3, op: 'get' }, 11_000)]);
    expect(driver.values('out')).toEqual([
      { at: 10_000, last: 'x' },
      { at: 10_999, last: 'x' },
      { at: 11_000, last: null },
    ]);
  });

  it('commits a freshly written TTL value (it is not expired at its own commit)', async () => {
    const driver = driverFor(ttlFn);
    await driver.send([rec({ k: 'a', ts: 1, op: 'set', v: 'x' }, 10_000)]);
    const stored = await driver.state('process-0', 'a');
    expect(stored).toBeDefined();
    expect((stored?.last as unknown[] | undefined)?.[0]).toBe('x');
  });

  it('a write refreshes the TTL', async () => {
    const driver = driverFor(ttlFn);
    await driver.send([rec({ k: 'a', ts: 1, op: 'set', v: 'x' }, 10_000)]);
    await driver.send([rec({ k: 'a', ts: 2, op: 'set', v: 'y' }, 10_800)]);
    await driver.send([rec({ k: 'a', ts: 3, op: 'get' }, 11_500)]);
    await driver.send([rec({ k: 'a', ts: 4, op: 'get' }, 11_800)]);
    expect(driver.values('out')).toEqual([
      { at: 10_000, last: 'x' },
      { at: 10_800, last: 'y' },
      { at: 11_500, last: 'y' },
      { at: 11_800, last: null },
    ]);
  });

  it('expires on read inside a processing-time timer after advanceProcessingTime', async () => {
    const driver = driverFor(ttlFn);
    await driver.send([
      rec({ k: 'a', ts: 1, op: 'set', v: 'x' }, 10_000),
      rec({ k: 'a', ts: 1, op: 'timer', at: 10_500 }, 10_000),
      rec({ k: 'a', ts: 1, op: 'timer', at: 11_200 }, 10_000),
    ]);
    await driver.advanceProcessingTime(10_500);
    await driver.advanceProcessingTime(11_200);
    expect(driver.values('out')).toEqual([
      { at: 10_000, last: 'x' },
      { at: 10_000, last: 'x' },
      { at: 10_000, last: 'x' },
      { timerAt: 10_500, last: 'x' },
      { timerAt: 11_200, last: null },
    ]);
  });

  it('expired values are not written back when the key is written again', async () => {
    const driver = driverFor(ttlFn);
    await driver.send([
      rec({ k: 'a', ts: 1, op: 'set', v: 'x' }, 10_000),
      rec({ k: 'a', ts: 1, op: 'touch' }, 10_000),
    ]);
    const before = await driver.state('process-0', 'a');
    expect(Object.keys(before ?? {}).sort()).toEqual(['last', 'seen']);
    await driver.send([rec({ k: 'a', ts: 2, op: 'touch' }, 11_000)]);
    expect(await driver.state('process-0', 'a')).toEqual({ seen: [2] });
  });

  it('TTL keeps counting across a restart', async () => {
    const driver = driverFor(ttlFn);
    await driver.send([rec({ k: 'a', ts: 1, op: 'set', v: 'x' }, 10_000)]);
    driver.restart();
    await driver.send([rec({ k: 'a', ts: 2, op: 'get' }, 10_500)]);
    driver.restart();
    await driver.send([rec({ k: 'a', ts: 3, op: 'get' }, 11_000)]);
    expect(driver.values('out')).toEqual([
      { at: 10_000, last: 'x' },
      { at: 10_500, last: 'x' },
      { at: 11_000, last: null },
    ]);
  });

  it('map state expires per entry', async () => {
    const driver = driverFor({
      state: { m: mapState<string, number>({ ttl: 1000 }) },
      processElement(e: Ev, ctx) {
        if (e.op === 'put') ctx.state.m.put(e.v as string, e.ts);
        ctx.emit({
          at: ctx.currentProcessingTime,
          entries: ctx.state.m.entries(),
          hasA: ctx.state.m.has('a'),
          size: ctx.state.m.size,
        });
      },
    });
    await driver.send([rec({ k: 'x', ts: 1, op: 'put', v: 'a' }, 10_000)]);
    await driver.send([rec({ k: 'x', ts: 2, op: 'put', v: 'b' }, 10_600)]);
    await driver.send([rec({ k: 'x', ts: 3, op: 'get' }, 11_000)]);
    await driver.send([rec({ k: 'x', ts: 4, op: 'put', v: 'c' }, 11_100)]);
    expect(driver.values('out')).toEqual([
      { at: 10_000, entries: [['a', 1]], hasA: true, size: 1 },
      {
        at: 10_600,
        entries: [
          ['a', 1],
          ['b', 2],
        ],
        hasA: true,
        size: 2,
      },
      { at: 11_000, entries: [['b', 2]], hasA: false, size: 1 },
      {
        at: 11_100,
        entries: [
          ['b', 2],
          ['c', 4],
        ],
        hasA: false,
        size: 2,
      },
    ]);
    // The expired entry 'a' is not written back with the key.
    const stored = (await driver.state('process-0', 'x'))?.m as unknown[][] | undefined;
    expect(stored?.map((row) => row[0])).toEqual(['b', 'c']);
  });

  it('an expired map entry put again is a new entry, last in order, as after a restart', async () => {
    const run = async (restart: boolean): Promise<unknown[]> => {
      const driver = driverFor({
        state: { m: mapState<string, number>({ ttl: 1000 }) },
        processElement(e: Ev, ctx) {
          ctx.state.m.put(e.v as string, e.ts);
          ctx.emit(ctx.state.m.keys());
        },
      });
      await driver.send([rec({ k: 'x', ts: 1, v: 'a' }, 0)]);
      await driver.send([rec({ k: 'x', ts: 2, v: 'b' }, 500)]);
      await driver.send([rec({ k: 'x', ts: 3, v: 'c' }, 1050)]); // 'a' has expired
      if (restart) driver.restart();
      await driver.send([rec({ k: 'x', ts: 4, v: 'a' }, 1100)]);
      return driver.values('out');
    };
    expect(await run(false)).toEqual([['a'], ['a', 'b'], ['b', 'c'], ['b', 'c', 'a']]);
    expect(await run(true)).toEqual(await run(false));
  });

  it('a record is processed at its own arrival, not at a later record of the same send', async () => {
    const driver = driverFor({
      state: { n: valueState<number>({ ttl: 5000 }) },
      processElement(_e: Ev, ctx) {
        const n = (ctx.state.n.value() ?? 0) + 1;
        ctx.state.n.update(n);
        ctx.emit({ at: ctx.currentProcessingTime, n });
      },
    });
    // One send, one commit: the first record's value expires before the second arrives.
    await driver.send([rec({ k: 'x', ts: 1 }, 1000), rec({ k: 'x', ts: 2 }, 9000)]);
    expect(driver.values('out')).toEqual([
      { at: 1000, n: 1 },
      { at: 9000, n: 1 },
    ]);
    expect((await driver.checkpoint())?.commitNumber).toBe(1);
  });

  it('list state expires per item', async () => {
    const driver = driverFor({
      state: { l: listState<number>({ ttl: 1000 }) },
      processElement(e: Ev, ctx) {
        if (e.op === 'add') ctx.state.l.add(e.ts);
        ctx.emit({ at: ctx.currentProcessingTime, items: [...ctx.state.l.get()] });
      },
    });
    await driver.send([rec({ k: 'x', ts: 1, op: 'add' }, 10_000)]);
    await driver.send([rec({ k: 'x', ts: 2, op: 'add' }, 10_600)]);
    await driver.send([rec({ k: 'x', ts: 3, op: 'get' }, 11_000)]);
    await driver.send([rec({ k: 'x', ts: 4, op: 'add' }, 11_100)]);
    await driver.send([rec({ k: 'x', ts: 5, op: 'get' }, 11_600)]);
    expect(driver.values('out')).toEqual([
      { at: 10_000, items: [1] },
      { at: 10_600, items: [1, 2] },
      { at: 11_000, items: [2] },
      { at: 11_100, items: [2, 4] },
      { at: 11_600, items: [4] },
    ]);
    const stored = (await driver.state('process-0', 'x'))?.l as unknown[][] | undefined;
    expect(stored?.map((row) => row[0])).toEqual([2, 4]);
  });
});

/** Registers / deletes timers by command and reports each firing with its context. */
const timerFn: KeyedProcessFunction<Ev, unknown> = {
  processElement(e, ctx) {
    const ns = e.ns ?? '';
    if (e.op === 'event') ctx.timers.registerEventTimeTimer(e.at!, ns);
    if (e.op === 'delete-event') ctx.timers.deleteEventTimeTimer(e.at!, ns);
    if (e.op === 'processing') ctx.timers.registerProcessingTimeTimer(e.at!, ns);
    if (e.op === 'delete-processing') ctx.timers.deleteProcessingTimeTimer(e.at!, ns);
  },
  onTimer(timer, ctx) {
    ctx.emit({
      key: ctx.key,
      time: timer.time,
      domain: timer.domain,
      ns: timer.namespace,
      ts: ctx.timestamp,
      wm: ctx.currentWatermark,
      pt: ctx.currentProcessingTime,
    });
  },
};

type Fired = { key: StateKey; time: number; domain: string; ns: string | number };
const fired = (driver: TestDriver): Fired[] =>
  driver.values<Fired>('out').map(({ key, time, domain, ns }) => ({ key, time, domain, ns }));

describe('event-time timers', () => {
  it('fire once the watermark reaches their time, with the timer context', async () => {
    const driver = driverFor(timerFn);
    await driver.send([rec({ k: 'a', ts: 0, op: 'event', at: 100 }, 5_000)]);
    expect(await driver.watermark()).toBe(-1);
    await driver.advanceWatermark(99);
    expect(driver.values('out')).toEqual([]);
    await driver.advanceWatermark(100);
    expect(driver.values('out')).toEqual([
      { key: 'a', time: 100, domain: 'event', ns: '', ts: 100, wm: 100, pt: 5_000 },
    ]);
    expect(await driver.timers()).toEqual([]);
  });

  it('fire in (time, key, namespace) order across keys, numbers before strings', async () => {
    const driver = driverFor(timerFn);
    await driver.send([
      rec({ k: 'b', ts: 0, op: 'event', at: 100 }),
      rec({ k: 'a', ts: 0, op: 'event', at: 100, ns: 'y' }),
      rec({ k: 'a', ts: 0, op: 'event', at: 100 }),
      rec({ k: 2, ts: 0, op: 'event', at: 100 }),
      rec({ k: 'z', ts: 0, op: 'event', at: 50 }),
      rec({ k: 'a', ts: 0, op: 'event', at: 100, ns: 3 }),
      rec({ k: 1, ts: 0, op: 'event', at: 100 }),
      rec({ k: 'a', ts: 0, op: 'event', at: 100, ns: 'x' }),
      rec({ k: 'c', ts: 0, op: 'event', at: 75 }),
    ]);
    await driver.advanceWatermark(1_000);
    expect(fired(driver)).toEqual([
      { key: 'z', time: 50, domain: 'event', ns: '' },
      { key: 'c', time: 75, domain: 'event', ns: '' },
      { key: 1, time: 100, domain: 'event', ns: '' },
      { key: 2, time: 100, domain: 'event', ns: '' },
      { key: 'a', time: 100, domain: 'event', ns: 3 },
      { key: 'a', time: 100, domain: 'event', ns: '' },
      { key: 'a', time: 100, domain: 'event', ns: 'x' },
      { key: 'a', time: 100, domain: 'event', ns: 'y' },
      { key: 'b', time: 100, domain: 'event', ns: '' },
    ]);
  });

  it('fire when the records themselves advance the watermark (WM = max ts - bound - 1)', async () => {
    const driver = driverFor(timerFn);
    await driver.send([rec({ k: 'a', ts: 0, op: 'event', at: 100 })]);
    await driver.send([rec({ k: 'b', ts: 100 })]);
    expect(driver.values('out')).toEqual([]);
    await driver.send([rec({ k: 'b', ts: 101 })]);
    expect(fired(driver)).toEqual([{ key: 'a', time: 100, domain: 'event', ns: '' }]);
  });

  it('registration is idempotent per (key, time, namespace)', async () => {
    const driver = driverFor(timerFn);
    await driver.send([
      rec({ k: 'a', ts: 0, op: 'event', at: 100 }),
      rec({ k: 'a', ts: 0, op: 'event', at: 100 }),
      rec({ k: 'a', ts: 0, op: 'event', at: 100, ns: 'n' }),
    ]);
    await driver.send([rec({ k: 'a', ts: 0, op: 'event', at: 100 })]);
    expect(await driver.timers()).toEqual([
      { operator: 'process-0', domain: 'event', time: 100, key: 'a', namespace: '' },
      { operator: 'process-0', domain: 'event', time: 100, key: 'a', namespace: 'n' },
    ]);
    await driver.advanceWatermark(100);
    expect(fired(driver)).toEqual([
      { key: 'a', time: 100, domain: 'event', ns: '' },
      { key: 'a', time: 100, domain: 'event', ns: 'n' },
    ]);
  });

  it('deleted timers do not fire; deleting a missing timer is a no-op', async () => {
    const driver = driverFor(timerFn);
    await driver.send([
      rec({ k: 'a', ts: 0, op: 'event', at: 100 }),
      rec({ k: 'a', ts: 0, op: 'event', at: 200 }),
      rec({ k: 'b', ts: 0, op: 'event', at: 100 }),
      rec({ k: 'a', ts: 0, op: 'delete-event', at: 100 }),
      rec({ k: 'a', ts: 0, op: 'delete-event', at: 300 }),
      rec({ k: 'a', ts: 0, op: 'delete-event', at: 200, ns: 'other' }),
    ]);
    expect(await driver.timers()).toEqual([
      { operator: 'process-0', domain: 'event', time: 100, key: 'b', namespace: '' },
      { operator: 'process-0', domain: 'event', time: 200, key: 'a', namespace: '' },
    ]);
    await driver.advanceWatermark(1_000);
    expect(fired(driver)).toEqual([
      { key: 'b', time: 100, domain: 'event', ns: '' },
      { key: 'a', time: 200, domain: 'event', ns: '' },
    ]);
  });

  it('a timer registered in processElement behind the watermark fires at the next watermark advance', async () => {
    const driver = driverFor(timerFn);
    await driver.send([rec({ k: 'b', ts: 100 })]);
    expect(await driver.watermark()).toBe(99);
    await driver.send([rec({ k: 'a', ts: 10, op: 'event', at: 50 })]);
    expect(driver.values('out')).toEqual([]);
    expect(await driver.timers()).toEqual([
      { operator: 'process-0', domain: 'event', time: 50, key: 'a', namespace: '' },
    ]);
    await driver.advanceWatermark(100);
    expect(driver.values('out')).toEqual([
      { key: 'a', time: 50, domain: 'event', ns: '', ts: 50, wm: 100, pt: 0 },
    ]);
  });

  it('timers registered inside onTimer at an already-passed time fire in the same advance', async () => {
    const driver = driverFor({
      processElement(e: Ev, ctx) {
        ctx.timers.registerEventTimeTimer(e.at!);
      },
      onTimer(timer, ctx) {
        ctx.emit({ time: timer.time, ns: timer.namespace, wm: ctx.currentWatermark });
        if (timer.namespace === '') {
          ctx.timers.registerEventTimeTimer(50, 'again');
          ctx.timers.registerEventTimeTimer(150, 'again');
          ctx.timers.registerEventTimeTimer(250, 'again');
        }
      },
    });
    await driver.send([rec({ k: 'a', ts: 0, at: 100 })]);
    await driver.advanceWatermark(200);
    expect(driver.values('out')).toEqual([
      { time: 100, ns: '', wm: 200 },
      { time: 50, ns: 'again', wm: 200 },
      { time: 150, ns: 'again', wm: 200 },
    ]);
    expect(await driver.timers()).toEqual([
      { operator: 'process-0', domain: 'event', time: 250, key: 'a', namespace: 'again' },
    ]);
  });
});

describe('timers changed by a timer that fires at the same time (as Flink: due timers leave the queue one by one)', () => {
  /** Registers a timer per record; onTimer runs the record's plan for its namespace. */
  function plannedDriver(
    plan: (timer: { time: number; ns: string | number; key: StateKey }, ctx: ProcessContext<unknown>) => void,
    domain: 'event' | 'processing' = 'event',
  ): TestDriver {
    return driverFor({
      processElement(e: Ev, ctx) {
        if (domain === 'event') ctx.timers.registerEventTimeTimer(e.at!, e.ns ?? '');
        else ctx.timers.registerProcessingTimeTimer(e.at!, e.ns ?? '');
      },
      onTimer(timer, ctx) {
        ctx.emit(`${ctx.key}/${timer.namespace}@${timer.time}`);
        plan({ time: timer.time, ns: timer.namespace, key: ctx.key }, ctx);
      },
    });
  }
  const at10 = (k: string, ns: string): DriverRecord => rec({ k, ts: 0, at: 10, ns }, 1_000);

  it('a timer deleted by an earlier timer of the same time does not fire (event and processing time)', async () => {
    const event = plannedDriver((t, ctx) => {
      if (t.ns === 'x') ctx.timers.deleteEventTimeTimer(10, 'y');
    });
    await event.send([at10('a', 'x'), at10('a', 'y')]);
    await event.advanceWatermark(20);
    expect(event.values('out')).toEqual(['a/x@10']);
    expect(await event.timers()).toEqual([]);

    const processing = plannedDriver((t, ctx) => {
      if (t.ns === 'x') ctx.timers.deleteProcessingTimeTimer(10, 'y');
    }, 'processing');
    await processing.send([
      rec({ k: 'a', ts: 0, at: 10, ns: 'x' }, 0),
      rec({ k: 'a', ts: 0, at: 10, ns: 'y' }, 0),
    ]);
    await processing.advanceProcessingTime(20);
    expect(processing.values('out')).toEqual(['a/x@10']);
  });

  it('registering a pending timer of the same time again is a no-op: it fires once', async () => {
    const driver = plannedDriver((t, ctx) => {
      if (t.ns === 'x') ctx.timers.registerEventTimeTimer(10, 'y');
    });
    await driver.send([at10('a', 'x'), at10('a', 'y')]);
    await driver.advanceWatermark(20);
    expect(driver.values('out')).toEqual(['a/x@10', 'a/y@10']);
  });

  it('a timer registered for the firing time fires in its (key, namespace) place', async () => {
    const driver = plannedDriver((t, ctx) => {
      if (t.key === 'a' && t.ns === '') ctx.timers.registerEventTimeTimer(10, 'z');
    });
    await driver.send([at10('b', ''), at10('a', '')]);
    await driver.advanceWatermark(20);
    expect(driver.values('out')).toEqual(['a/@10', 'a/z@10', 'b/@10']);
  });

  it('a timer registered for an earlier, passed time fires before the rest of the current time', async () => {
    const driver = plannedDriver((t, ctx) => {
      if (t.key === 'a' && t.time === 10) ctx.timers.registerEventTimeTimer(5, 'early');
    });
    await driver.send([at10('a', ''), at10('b', ''), rec({ k: 'c', ts: 0, at: 7 }, 1_000)]);
    await driver.advanceWatermark(20);
    expect(driver.values('out')).toEqual(['c/@7', 'a/@10', 'a/early@5', 'b/@10']);
    expect(await driver.timers()).toEqual([]);
  });

  it('a fired timer registered again by itself fires again (once per registration)', async () => {
    let again = 1;
    const driver = plannedDriver((t, ctx) => {
      if (again-- > 0) ctx.timers.registerEventTimeTimer(t.time, t.ns);
    });
    await driver.send([at10('a', '')]);
    await driver.advanceWatermark(20);
    expect(driver.values('out')).toEqual(['a/@10', 'a/@10']);
  });

  it('a failing timer that deleted a same-time timer is rolled back: the deleted timer fires', async () => {
    const driver = plannedDriver((t, ctx) => {
      if (t.ns === 'x') {
        ctx.timers.deleteEventTimeTimer(10, 'y');
        ctx.timers.registerEventTimeTimer(10, 'w');
        throw new Error('x fails');
      }
    });
    await driver.send([at10('a', 'x'), at10('a', 'y')]);
    await driver.advanceWatermark(20);
    // x's emit is dropped with its other effects; y still fires and w was never registered.
    expect(driver.values('out')).toEqual(['a/y@10']);
    expect(driver.values<{ reason: string }>('floe.dead-letter').map((l) => l.reason)).toEqual(['timer']);
    expect(await driver.timers()).toEqual([]);
  });

  it('the same results after a restart between registration and firing', async () => {
    const driver = plannedDriver((t, ctx) => {
      if (t.ns === 'x') ctx.timers.deleteEventTimeTimer(10, 'y');
      if (t.key === 'a' && t.ns === '') ctx.timers.registerEventTimeTimer(10, 'z');
    });
    await driver.send([at10('b', ''), at10('a', ''), at10('a', 'x'), at10('a', 'y')]);
    await driver.restart();
    await driver.advanceWatermark(20);
    expect(driver.values('out')).toEqual(['a/@10', 'a/x@10', 'a/z@10', 'b/@10']);
  });
});

describe('timer arguments are checked', () => {
  it('refuses fractional, out-of-range and NaN times and non-finite namespaces; the record is dead-lettered', async () => {
    const driver = driverFor({
      processElement(e: Ev, ctx) {
        ctx.timers.registerEventTimeTimer(e.at!, e.ns);
      },
    });
    await driver.send([
      rec({ k: 'a', ts: 0, at: 1.5 }),
      rec({ k: 'a', ts: 0, at: 1e300 }),
      rec({ k: 'a', ts: 0, at: -8840000000000001 }),
      rec({ k: 'a', ts: 0, at: Number.NaN }),
      rec({ k: 'a', ts: 0, at: 10, ns: Number.NaN as unknown as string }),
      rec({ k: 'a', ts: 0, at: 10, ns: 7 }),
      rec({ k: 'a', ts: 0, at: Number.POSITIVE_INFINITY }),
    ]);
    const time = (t: string) =>
      `TypeError: timer time must be whole epoch milliseconds within ±8840000000000000 (a JavaScript Date's range plus twice the longest duration), or ±Infinity; received ${t}. Round it with Math.floor.`;
    expect(driver.values<{ message: string }>('floe.dead-letter').map((l) => l.message)).toEqual([
      time('1.5'),
      time('1e+300'),
      time('-8840000000000001'),
      time('NaN'),
      'TypeError: timer namespace must be a string or a finite number; received NaN',
    ]);
    expect(await driver.timers()).toEqual([
      { operator: 'process-0', domain: 'event', time: 10, key: 'a', namespace: 7 },
      { operator: 'process-0', domain: 'event', time: Number.POSITIVE_INFINITY, key: 'a', namespace: '' },
    ]);
  });
});

describe('the end-of-input watermark (MAX_WATERMARK)', () => {
  it('fires every pending event-time timer and leaves the queue empty', async () => {
    const driver = driverFor(timerFn);
    await driver.send([
      rec({ k: 'a', ts: 0, op: 'event', at: 100 }),
      rec({ k: 'b', ts: 0, op: 'event', at: 1e15 }),
      rec({ k: 'c', ts: 0, op: 'processing', at: 1e15 }),
    ]);
    await driver.advanceWatermark(MAX_WATERMARK);
    expect(fired(driver)).toEqual([
      { key: 'a', time: 100, domain: 'event', ns: '' },
      { key: 'b', time: 1e15, domain: 'event', ns: '' },
    ]);
    expect(await driver.watermark()).toBe(Number.POSITIVE_INFINITY);
    expect(await driver.timers()).toEqual([
      { operator: 'process-0', domain: 'processing', time: 1e15, key: 'c', namespace: '' },
    ]);
    // A later advance with nothing pending is a no-op, not an error.
    await driver.advanceWatermark(MAX_WATERMARK);
    expect(fired(driver)).toHaveLength(2);
  });

  it('a timer registered at MAX_WATERMARK survives a restart and fires at the end of input', async () => {
    const driver = driverFor(timerFn);
    await driver.send([rec({ k: 'a', ts: 0, op: 'event', at: MAX_WATERMARK })]);
    driver.restart();
    expect(await driver.timers()).toEqual([
      { operator: 'process-0', domain: 'event', time: Number.POSITIVE_INFINITY, key: 'a', namespace: '' },
    ]);
    await driver.advanceWatermark(1e15);
    expect(fired(driver)).toEqual([]);
    await driver.advanceWatermark(MAX_WATERMARK);
    // Published as JSON, as every backend stores outputs: Infinity becomes null.
    expect(fired(driver)).toEqual([{ key: 'a', time: null, domain: 'event', ns: '' }]);
  });
});

describe('processing-time timers', () => {
  it('fire on advanceProcessingTime, not on watermarks', async () => {
    const driver = driverFor(timerFn);
    await driver.send([rec({ k: 'a', ts: 0, op: 'processing', at: 6_000 }, 5_000)]);
    await driver.advanceWatermark(1_000_000);
    await driver.advanceProcessingTime(5_999);
    expect(driver.values('out')).toEqual([]);
    await driver.advanceProcessingTime(6_000);
    expect(driver.values('out')).toEqual([
      { key: 'a', time: 6_000, domain: 'processing', ns: '', ts: 6_000, wm: 1_000_000, pt: 6_000 },
    ]);
    expect(await driver.timers()).toEqual([]);
  });

  it('fire in (time, key, namespace) order; deleted ones do not fire', async () => {
    const driver = driverFor(timerFn);
    await driver.send([
      rec({ k: 'b', ts: 0, op: 'processing', at: 6_000 }, 5_000),
      rec({ k: 'a', ts: 0, op: 'processing', at: 6_000, ns: 'n' }, 5_000),
      rec({ k: 'a', ts: 0, op: 'processing', at: 6_000 }, 5_000),
      rec({ k: 'c', ts: 0, op: 'processing', at: 5_500 }, 5_000),
      rec({ k: 'd', ts: 0, op: 'processing', at: 5_700 }, 5_000),
      rec({ k: 'd', ts: 0, op: 'delete-processing', at: 5_700 }, 5_000),
    ]);
    await driver.advanceProcessingTime(7_000);
    expect(fired(driver)).toEqual([
      { key: 'c', time: 5_500, domain: 'processing', ns: '' },
      { key: 'a', time: 6_000, domain: 'processing', ns: '' },
      { key: 'a', time: 6_000, domain: 'processing', ns: 'n' },
      { key: 'b', time: 6_000, domain: 'processing', ns: '' },
    ]);
  });

  it('a processing-time timer at or before the current processing time fires in the same batch', async () => {
    const driver = driverFor(timerFn);
    await driver.send([rec({ k: 'a', ts: 0, op: 'processing', at: 4_000 }, 5_000)]);
    expect(fired(driver)).toEqual([{ key: 'a', time: 4_000, domain: 'processing', ns: '' }]);
  });
});

describe('the process context', () => {
  it('exposes key, element timestamp, watermark before the element and processing time', async () => {
    const driver = driverFor({
      processElement(_e: Ev, ctx) {
        ctx.emit({
          key: ctx.key,
          ts: ctx.timestamp,
          wm: ctx.currentWatermark,
          pt: ctx.currentProcessingTime,
        });
      },
    });
    await driver.send([rec({ k: 'a', ts: 100 }, 1_000)]);
    await driver.send([rec({ k: 7, ts: 250 }, 2_000)]);
    await driver.send([rec({ k: 'a', ts: 120 }, 3_000)]);
    expect(driver.values('out')).toEqual([
      { key: 'a', ts: 100, wm: null, pt: 1_000 }, // -Infinity, published as JSON
      { key: 7, ts: 250, wm: 99, pt: 2_000 },
      { key: 'a', ts: 120, wm: 249, pt: 3_000 },
    ]);
  });

  it('uses the arrival time as the element timestamp without withTimestamps', async () => {
    const driver = driverFor(
      {
        processElement(_e: Ev, ctx) {
          ctx.emit({ ts: ctx.timestamp, wm: ctx.currentWatermark });
        },
      },
      { timestamps: false },
    );
    await driver.send([rec({ k: 'a', ts: 1 }, 4_242)]);
    expect(driver.values('out')).toEqual([{ ts: 4_242, wm: null }]); // -Infinity, published as JSON
  });

  it('emits with an explicit timestamp and with the default one', async () => {
    const driver = driverFor({
      processElement(e: Ev, ctx) {
        ctx.emit({ n: 1, k: e.k }, e.ts + 1_000);
        ctx.emit({ n: 2, k: e.k });
      },
    });
    await driver.send([rec({ k: 'a', ts: 10 })]);
    expect(driver.values('out')).toEqual([
      { n: 1, k: 'a' },
      { n: 2, k: 'a' },
    ]);
    expect(driver.outputs().map((o) => o.id)).toEqual([
      'process-test/shardId-000000000000/1/0',
      'process-test/shardId-000000000000/1/1',
    ]);
  });
});

describe('side outputs', () => {
  function sideDriver(): TestDriver {
    const p = pipeline('side-test');
    const processed = p
      .source<Ev>({ deserializer: passthroughDeserializer<Ev>() })
      .withTimestamps((e) => e.ts, boundedOutOfOrderness(0))
      .keyBy((e) => e.k)
      .process<{ main: StateKey }>({
        processElement(e, ctx) {
          ctx.emit({ main: ctx.key });
          if (e.op === 'alert') ctx.output('alerts', { alert: ctx.key, v: e.v });
          ctx.output('audit', { audit: ctx.key, ts: ctx.timestamp });
          if (e.at !== undefined) ctx.timers.registerEventTimeTimer(e.at);
        },
        onTimer(timer, ctx) {
          ctx.output('alerts', { alert: ctx.key, timer: timer.time });
        },
      });
    processed.sink('out');
    processed
      .sideOutput<{ alert: StateKey }>('alerts')
      .map((a) => ({ ...a, mapped: true }))
      .sink('alert-sink');
    return new TestDriver(p);
  }

  /**
   * A process function that emits { main: key } for every record and, for a record with an op,
   * sends a side output to the name `names` gives that op.
   */
  function outputByOp(name: string, names: Record<string, unknown>): TestDriver {
    const p = pipeline(name);
    p.source<Ev>({ deserializer: passthroughDeserializer<Ev>() })
      .withTimestamps((e) => e.ts, boundedOutOfOrderness(0))
      .keyBy((e) => e.k)
      .process<{ main: StateKey }>({
        processElement(e, ctx) {
          ctx.emit({ main: ctx.key });
          if (e.op !== undefined) ctx.output(names[e.op as string] as string, { x: 1 });
        },
      })
      .sink('out');
    return new TestDriver(p);
  }

  it('ctx.output to a "floe." name dead-letters the record: floe.dead-letter and floe.late take no user data', async () => {
    const driver = outputByOp('side-reserved', { dl: 'floe.dead-letter', late: 'floe.late' });
    await driver.send([
      rec({ k: 'a', ts: 5, op: 'dl' }),
      rec({ k: 'b', ts: 6 }),
      rec({ k: 'c', ts: 7, op: 'late' }),
    ]);
    expect(driver.values('out')).toEqual([{ main: 'b' }]);
    expect(driver.values('floe.late')).toEqual([]);
    const letters = driver.values<{ reason: string; message: string }>('floe.dead-letter');
    expect(letters.map((l) => [l.reason, l.message])).toEqual([
      [
        'user-function',
        'TypeError: ctx.output("floe.dead-letter"): side output names starting with "floe." are reserved for floe\'s own sinks (floe.dead-letter, floe.late); choose another name',
      ],
      [
        'user-function',
        'TypeError: ctx.output("floe.late"): side output names starting with "floe." are reserved for floe\'s own sinks (floe.dead-letter, floe.late); choose another name',
      ],
    ]);
  });

  it('ctx.output without a usable name dead-letters the record, saying what it received', async () => {
    const driver = outputByOp('side-unnamed', { empty: '', number: 5, none: undefined, all: '*', eq: 'a=b' });
    await driver.send([
      rec({ k: 'a', ts: 5, op: 'empty' }),
      rec({ k: 'b', ts: 6 }),
      rec({ k: 'c', ts: 7, op: 'number' }),
      rec({ k: 'd', ts: 8, op: 'none' }),
      rec({ k: 'e', ts: 9, op: 'all' }),
      rec({ k: 'f', ts: 10, op: 'eq' }),
    ]);
    expect(driver.values('out')).toEqual([{ main: 'b' }]);
    const letters = driver.values<{ reason: string; message: string }>('floe.dead-letter');
    expect(letters.map((l) => [l.reason, l.message])).toEqual([
      ...['""', '5', 'undefined'].map((received) => [
        'user-function',
        `TypeError: ctx.output needs a side output name of 1 to 200 characters; received ${received}`,
      ]),
      [
        'user-function',
        'TypeError: ctx.output: the name "*" stands for every other sink in sink bindings; choose another name',
      ],
      [
        'user-function',
        'TypeError: ctx.output: the name "a=b" contains "=", which ends a sink\'s name in a sink binding (name=destination); choose a name without "="',
      ],
    ]);
  });

  it('consumed side outputs flow through their branch; unconsumed ones go to a sink of that name', async () => {
    const driver = sideDriver();
    await driver.send([
      rec({ k: 'a', ts: 5, op: 'alert', v: 1 }),
      rec({ k: 'b', ts: 6 }),
      rec({ k: 'c', ts: 7, op: 'alert', v: 3, at: 20 }),
    ]);
    await driver.advanceWatermark(20);
    expect(driver.values('out')).toEqual([{ main: 'a' }, { main: 'b' }, { main: 'c' }]);
    expect(driver.values('alert-sink')).toEqual([
      { alert: 'a', v: 1, mapped: true },
      { alert: 'c', v: 3, mapped: true },
      { alert: 'c', timer: 20, mapped: true },
    ]);
    expect(driver.values('audit')).toEqual([
      { audit: 'a', ts: 5 },
      { audit: 'b', ts: 6 },
      { audit: 'c', ts: 7 },
    ]);
    expect(driver.values('alerts')).toEqual([]);
    expect(driver.outputs().map((o) => o.sink)).toEqual([
      'out',
      'alert-sink',
      'audit',
      'out',
      'audit',
      'out',
      'alert-sink',
      'audit',
      'alert-sink',
    ]);
  });
});

describe('the test driver publishes outputs as a durable backend stores them (JSON)', () => {
  it('a Date is published as its string; a value changed after its commit does not change what was published', async () => {
    const held = { n: 0 };
    const driver = driverFor({
      processElement(e: Ev, ctx) {
        held.n++;
        ctx.emit({ at: new Date(e.ts), held });
      },
    });
    await driver.send([rec({ k: 'a', ts: 0 })]);
    await driver.send([rec({ k: 'a', ts: 1 })]);
    expect(driver.values('out')).toEqual([
      { at: '1970-01-01T00:00:00.000Z', held: { n: 1 } },
      { at: '1970-01-01T00:00:00.001Z', held: { n: 2 } },
    ]);
  });

  it('a value JSON cannot hold fails the commit, as floe simulate does (the Lambda worker dead-letters it)', async () => {
    const driver = driverFor({
      processElement(e: Ev, ctx) {
        ctx.emit({ big: BigInt(e.ts) });
      },
    });
    await expect(driver.send([rec({ k: 'a', ts: 5 })])).rejects.toThrow(
      /output .* to sink "out" is not JSON-serializable \(TypeError: Do not know how to serialize a BigInt\)/,
    );
    expect(await driver.checkpoint()).toBeUndefined();
  });
});

describe('timers across a restart', () => {
  it('are committed in the checkpoint and fire after a restart with their key state', async () => {
    const driver = driverFor({
      state: { n: valueState<number>() },
      processElement(e: Ev, ctx) {
        ctx.state.n.update((ctx.state.n.value() ?? 0) + 1);
        if (e.op === 'event') ctx.timers.registerEventTimeTimer(e.at!, e.ns ?? '');
        if (e.op === 'processing') ctx.timers.registerProcessingTimeTimer(e.at!);
      },
      onTimer(timer, ctx) {
        ctx.emit({
          key: ctx.key,
          time: timer.time,
          domain: timer.domain,
          ns: timer.namespace,
          n: ctx.state.n.value(),
        });
      },
    });
    await driver.send([
      rec({ k: 'a', ts: 0, op: 'event', at: 100, ns: 'n1' }, 5_000),
      rec({ k: 'a', ts: 0 }, 5_000),
      rec({ k: 'b', ts: 0, op: 'processing', at: 7_000 }, 5_000),
      rec({ k: 3, ts: 0, op: 'event', at: 100 }, 5_000),
    ]);
    const expected = [
      { operator: 'process-0', domain: 'event', time: 100, key: 3, namespace: '' },
      { operator: 'process-0', domain: 'event', time: 100, key: 'a', namespace: 'n1' },
      { operator: 'process-0', domain: 'processing', time: 7_000, key: 'b', namespace: '' },
    ];
    expect(await driver.timers()).toEqual(expected);
    driver.restart();
    expect(await driver.timers()).toEqual(expected);
    await driver.advanceWatermark(100);
    driver.restart();
    expect(await driver.timers()).toEqual([expected[2]]);
    await driver.advanceProcessingTime(7_000);
    expect(driver.values('out')).toEqual([
      { key: 3, time: 100, domain: 'event', ns: '', n: 1 },
      { key: 'a', time: 100, domain: 'event', ns: 'n1', n: 2 },
      { key: 'b', time: 7_000, domain: 'processing', ns: '', n: 1 },
    ]);
    expect(await driver.timers()).toEqual([]);
  });
});
