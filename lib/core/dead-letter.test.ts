/**
 * Records that cannot be processed go to the dead-letter sink with their reason and position;
 * their partial effects are rolled back, other keys are unaffected and the shard keeps moving.
 */
import { describe, expect, it } from 'vitest';
import type { AggregateFunction } from './aggregates.ts';
import { count } from './aggregates.ts';
import { DEAD_LETTER_SINK, pipeline } from './dsl.ts';
import { SYNCHRONOUS_FUNCTIONS } from './errors.ts';
import type { KeyedProcessFunction } from './processor.ts';
import type { DeadLetter } from './shard-task.ts';
import { valueState } from './state.ts';
import { type DriverRecord, TestDriver } from './testing/test-driver.ts';
import { boundedOutOfOrderness } from './watermarks.ts';
import type { WindowResult } from './window-operator.ts';
import { session, sliding, tumbling } from './windows.ts';

interface Click {
  readonly user: string;
  readonly ts: number;
  readonly n?: number;
  readonly poison?: boolean;
}

const SHARD = 'shardId-000000000000';

const json = (value: unknown): string => JSON.stringify(value);
const click = (c: Click, arrival = 1_000): DriverRecord => ({ partitionKey: c.user, data: json(c), arrival });

/** Counts clicks per user in a value state and emits the running count. */
const counter: KeyedProcessFunction<
  Click,
  { user: string; count: number },
  { count: ReturnType<typeof valueState<number>> }
> = {
  state: { count: valueState<number>() },
  processElement(c, ctx) {
    const next = (ctx.state.count.value() ?? 0) + 1;
    ctx.state.count.update(next);
    ctx.emit({ user: c.user, count: next });
  },
};

function counterDriver(): TestDriver {
  const p = pipeline('dl');
  p.source<Click>()
    .withTimestamps((c) => c.ts, boundedOutOfOrderness(0))
    .keyBy((c) => c.user)
    .process(counter)
    .sink('out');
  return new TestDriver(p);
}

const letters = (driver: TestDriver): DeadLetter[] => driver.values<DeadLetter>(DEAD_LETTER_SINK);

describe('dead letters from the stateless prefix', () => {
  it('routes invalid JSON with reason "deserialize" and the record position; the batch continues', async () => {
    const driver = counterDriver();
    await driver.send([
      click({ user: 'u1', ts: 1 }, 500),
      { partitionKey: 'u1', data: '{oops', arrival: 500 },
      click({ user: 'u1', ts: 2 }, 500),
    ]);
    expect(letters(driver)).toEqual([
      {
        reason: 'deserialize',
        message: expect.stringMatching(/^SyntaxError: /),
        shardId: SHARD,
        sequenceNumber: '2',
        partitionKey: 'u1',
        arrivalTime: 500,
        data: '{oops',
      },
    ]);
    expect(driver.values('out')).toEqual([
      { user: 'u1', count: 1 },
      { user: 'u1', count: 2 },
    ]);
    // Outputs keep record order and get stable ids.
    expect(driver.outputs().map((o) => [o.id, o.sink])).toEqual([
      [`dl/${SHARD}/1/0`, 'out'],
      [`dl/${SHARD}/1/1`, DEAD_LETTER_SINK],
      [`dl/${SHARD}/1/2`, 'out'],
    ]);
    expect((await driver.checkpoint())?.position).toBe('3');
  });

  it('routes missing, non-numeric and out-of-range timestamps with reason "timestamp"', async () => {
    const driver = counterDriver();
    // 8.64e15 ms is a JavaScript Date's limit: windows and watermarks stay exact integers up to it.
    await driver.send([
      { partitionKey: 'u1', data: json({ user: 'u1' }) },
      { partitionKey: 'u2', data: json({ user: 'u2', ts: '2024-01-01' }) },
      { partitionKey: 'u3', data: json({ user: 'u3', ts: null }) },
      { partitionKey: 'u5', data: json({ user: 'u5', ts: 8.64e15 + 1 }) },
      { partitionKey: 'u6', data: json({ user: 'u6', ts: -9007199254740991 }) },
      click({ user: 'u7', ts: -8.64e15 }),
      click({ user: 'u4', ts: 10 }),
    ]);
    const expected = (received: string): string =>
      `timestamp extractor returned ${received}; expected epoch milliseconds within ±8640000000000000 (a JavaScript Date's range)`;
    expect(letters(driver).map((l) => [l.reason, l.sequenceNumber, l.partitionKey, l.message])).toEqual([
      ['timestamp', '1', 'u1', expected('undefined')],
      ['timestamp', '2', 'u2', expected('"2024-01-01"')],
      ['timestamp', '3', 'u3', expected('null')],
      ['timestamp', '4', 'u5', expected('8640000000000001')],
      ['timestamp', '5', 'u6', expected('-9007199254740991')],
    ]);
    expect(letters(driver)[0]?.data).toBe('{"user":"u1"}');
    expect(driver.values('out')).toEqual([
      { user: 'u7', count: 1 },
      { user: 'u4', count: 1 },
    ]);
    // The rejected records do not move event time; the good ones do.
    expect(await driver.watermark()).toBe(9);
  });

  it('routes a key selector returning an object (or NaN) with reason "key"', async () => {
    const p = pipeline('dl');
    p.source<{ user: unknown; ts: number }>()
      .withTimestamps((c) => c.ts, boundedOutOfOrderness(0))
      .keyBy((c) => c.user as string)
      .process(counter as unknown as KeyedProcessFunction<{ user: unknown; ts: number }, unknown>)
      .sink('out');
    const driver = new TestDriver(p);
    await driver.send([
      { partitionKey: 'p', data: json({ user: { id: 1 }, ts: 1 }) },
      { partitionKey: 'p', data: json({ user: 'ok', ts: 1 }) },
      { partitionKey: 'p', data: json({ ts: 1 }) },
    ]);
    expect(letters(driver)).toEqual([
      {
        reason: 'key',
        message: 'key selector returned {"id":1}; keys must be strings or finite numbers',
        shardId: SHARD,
        sequenceNumber: '1',
        partitionKey: 'p',
        arrivalTime: 0,
        data: '{"user":{"id":1},"ts":1}',
      },
      {
        reason: 'key',
        message: 'key selector returned undefined; keys must be strings or finite numbers',
        shardId: SHARD,
        sequenceNumber: '3',
        partitionKey: 'p',
        arrivalTime: 0,
        data: '{"ts":1}',
      },
    ]);
    expect(driver.values('out')).toEqual([{ user: 'ok', count: 1 }]);
  });

  it('routes non-finite numeric keys with reason "key"', async () => {
    const p = pipeline('dl-numeric');
    p.source<{ id: string }>()
      .keyBy((c) => Number(c.id))
      .process({
        processElement(_c, ctx) {
          ctx.emit(ctx.key);
        },
      })
      .sink('keys');
    const driver = new TestDriver(p);
    await driver.send([
      { partitionKey: 'p', data: json({ id: 'abc' }) },
      { partitionKey: 'p', data: json({ id: 'Infinity' }) },
      { partitionKey: 'p', data: json({ id: '12' }) },
    ]);
    expect(letters(driver).map((l) => [l.reason, l.sequenceNumber, l.message])).toEqual([
      ['key', '1', 'key selector returned NaN; keys must be strings or finite numbers'],
      ['key', '2', 'key selector returned Infinity; keys must be strings or finite numbers'],
    ]);
    expect(driver.values('keys')).toEqual([12]);
  });

  it('routes a throwing user map with reason "user-function"; other keys are unaffected', async () => {
    const p = pipeline('dl');
    p.source<Click>()
      .map((c) => {
        if (c.user === 'bad') throw new Error('bad user');
        return c;
      })
      .withTimestamps((c) => c.ts, boundedOutOfOrderness(0))
      .keyBy((c) => c.user)
      .process(counter)
      .sink('out');
    const driver = new TestDriver(p);
    await driver.send([
      click({ user: 'good', ts: 1 }),
      click({ user: 'bad', ts: 50 }),
      click({ user: 'good', ts: 2 }),
    ]);
    expect(letters(driver)).toEqual([
      {
        reason: 'user-function',
        message: 'Error: bad user',
        shardId: SHARD,
        sequenceNumber: '2',
        partitionKey: 'bad',
        arrivalTime: 1_000,
        data: '{"user":"bad","ts":50}',
      },
    ]);
    expect(driver.values('out')).toEqual([
      { user: 'good', count: 1 },
      { user: 'good', count: 2 },
    ]);
    expect(await driver.state('process-0', 'bad')).toBeUndefined();
    expect(await driver.watermark()).toBe(1);
  });

  it('drops every output of a flatMap record that throws half-way, including direct sink writes', async () => {
    const p = pipeline('dl');
    const parts = p.source<{ id: string; parts: number[] }>().flatMap((r) =>
      r.parts.map((x) => {
        if (x < 0) throw new RangeError(`negative part in ${r.id}`);
        return { id: r.id, x };
      }),
    );
    parts.sink('parts');
    const driver = new TestDriver(p);
    await driver.send([
      { partitionKey: 'p', data: json({ id: 'a', parts: [1, 2] }) },
      { partitionKey: 'p', data: json({ id: 'b', parts: [3, -1, 4] }) },
      { partitionKey: 'p', data: json({ id: 'c', parts: [5] }) },
    ]);
    expect(driver.values('parts')).toEqual([
      { id: 'a', x: 1 },
      { id: 'a', x: 2 },
      { id: 'c', x: 5 },
    ]);
    expect(letters(driver).map((l) => [l.reason, l.sequenceNumber, l.message])).toEqual([
      ['user-function', '2', 'RangeError: negative part in b'],
    ]);
  });
});

describe('functions that return a Promise (not declared async) are dead-lettered', () => {
  const promised = <T>(value: T): Promise<T> => Promise.resolve(value);
  const sync = SYNCHRONOUS_FUNCTIONS;

  it('map, filter and flatMap: reason "user-function"; no "{}" reaches the sink', async () => {
    const p = pipeline('dl');
    const source = p.source<Click>();
    source.map((c) => (c.poison ? promised(c) : c)).sink('mapped');
    source.filter((c) => (c.poison ? (promised(false) as unknown as boolean) : true)).sink('kept');
    source.flatMap((c) => (c.poison ? (promised([c]) as unknown as Click[]) : [c])).sink('flat');
    const driver = new TestDriver(p);
    await driver.send([click({ user: 'a', ts: 1 }), click({ user: 'b', ts: 2, poison: true })]);
    const a = { user: 'a', ts: 1 };
    expect(driver.values('mapped')).toEqual([a]);
    expect(driver.values('kept')).toEqual([a]);
    expect(driver.values('flat')).toEqual([a]);
    // All-or-nothing per record: the first failing function dead-letters the whole record.
    expect(letters(driver).map((l) => [l.reason, l.sequenceNumber, l.message])).toEqual([
      ['user-function', '2', `map returned a Promise. ${sync}.`],
    ]);
  });

  it('flatMap returning something that is not iterable says so', async () => {
    const p = pipeline('dl');
    p.source<Click>()
      .flatMap((c) => (c.poison ? (promised([c]) as unknown as Click[]) : (c.n as unknown as Click[])))
      .sink('flat');
    const driver = new TestDriver(p);
    await driver.send([click({ user: 'a', ts: 1, n: 3 }), click({ user: 'b', ts: 2, poison: true })]);
    expect(letters(driver).map((l) => [l.sequenceNumber, l.message])).toEqual([
      ['1', 'flatMap must return an iterable (an array, a Set, a generator); it returned 3'],
      ['2', `flatMap returned a Promise. ${sync}.`],
    ]);
  });

  it('processElement and window functions: the record rolls back; onTimer: reason "timer"', async () => {
    const p = pipeline('dl');
    const timed = p.source<Click>().withTimestamps((c) => c.ts, boundedOutOfOrderness(0));
    timed
      .keyBy((c) => c.user)
      .process({
        state: { seen: valueState<number>() },
        processElement(c, ctx) {
          ctx.state.seen.update(c.ts);
          ctx.timers.registerEventTimeTimer(c.ts + 10);
          if (c.poison) return promised(undefined) as unknown as undefined;
        },
        onTimer(timer, ctx) {
          ctx.emit({ user: ctx.key, at: timer.time });
          if (ctx.key === 'late-timer') return promised(undefined) as unknown as undefined;
        },
      })
      .sink('process');
    timed
      .keyBy((c) => c.user)
      .window(tumbling({ size: 100 }))
      .aggregate(count(), (r) => (r.key === 'late-timer' ? promised(r.result) : r.result))
      .sink('window');
    const driver = new TestDriver(p);
    await driver.send([
      click({ user: 'a', ts: 1 }),
      click({ user: 'b', ts: 2, poison: true }),
      click({ user: 'late-timer', ts: 3 }),
    ]);
    await driver.advanceWatermark(200);
    expect(await driver.state('process-0', 'b')).toBeUndefined();
    expect(driver.values('process')).toEqual([{ user: 'a', at: 11 }]);
    // b's record rolled back in both operators; late-timer's window firing failed.
    expect(driver.values('window')).toEqual([1]);
    expect(letters(driver).map((l) => [l.reason, l.message])).toEqual([
      ['user-function', `processElement returned a Promise. ${sync}.`],
      ['timer', `Error: onTimer returned a Promise. ${sync}.`],
      ['timer', `Error: an emitted value is a Promise (from a window function or ctx.emit). ${sync}.`],
    ]);
  });
});

describe('dead letters from keyed operators roll back the record', () => {
  it('a throwing processElement leaves no state, timers, outputs or side outputs; the key recovers', async () => {
    const p = pipeline('dl');
    p.source<Click>()
      .withTimestamps((c) => c.ts, boundedOutOfOrderness(0))
      .keyBy((c) => c.user)
      .process({
        state: { count: valueState<number>(), last: valueState<number>() },
        processElement(c, ctx) {
          const next = (ctx.state.count.value() ?? 0) + 1;
          ctx.state.count.update(next);
          ctx.state.last.update(c.ts);
          ctx.timers.registerEventTimeTimer(c.ts + 100);
          ctx.emit({ user: c.user, count: next });
          ctx.output('audit', { user: c.user, ts: c.ts });
          if (c.poison) {
            // Also delete the key's existing timer (a's first record set one at 101).
            ctx.timers.deleteEventTimeTimer(101);
            throw new Error(`poison from ${c.user}`);
          }
        },
        onTimer(timer, ctx) {
          ctx.emit({ timer: timer.time, user: ctx.key, count: ctx.state.count.value() });
        },
      })
      .sink('out');
    const driver = new TestDriver(p);
    await driver.send([click({ user: 'a', ts: 1 }), click({ user: 'b', ts: 1 })]);
    const stateBefore = await driver.state('process-0', 'a');
    expect(stateBefore).toEqual({ count: [1], last: [1] });
    const timersBefore = await driver.timers();

    await driver.send([
      click({ user: 'a', ts: 5, poison: true }),
      click({ user: 'b', ts: 6 }),
      click({ user: 'c', ts: 7, poison: true }),
    ]);
    expect(letters(driver)).toEqual([
      {
        reason: 'user-function',
        message: 'Error: poison from a',
        shardId: SHARD,
        sequenceNumber: '3',
        partitionKey: 'a',
        arrivalTime: 1_000,
        data: '{"user":"a","ts":5,"poison":true}',
      },
      {
        reason: 'user-function',
        message: 'Error: poison from c',
        shardId: SHARD,
        sequenceNumber: '5',
        partitionKey: 'c',
        arrivalTime: 1_000,
        data: '{"user":"c","ts":7,"poison":true}',
      },
    ]);
    expect(await driver.state('process-0', 'a')).toEqual(stateBefore);
    expect(await driver.state('process-0', 'c')).toBeUndefined();
    expect(await driver.state('process-0', 'b')).toEqual({ count: [2], last: [6] });
    expect(await driver.timers()).toEqual([
      ...timersBefore,
      { operator: 'process-0', domain: 'event', time: 106, key: 'b', namespace: '' },
    ]);
    expect(driver.values('out')).toEqual([
      { user: 'a', count: 1 },
      { user: 'b', count: 1 },
      { user: 'b', count: 2 },
    ]);
    expect(driver.values('audit')).toEqual([
      { user: 'a', ts: 1 },
      { user: 'b', ts: 1 },
      { user: 'b', ts: 6 },
    ]);
    const checkpoint = await driver.checkpoint();
    expect(checkpoint?.position).toBe('5');
    // Poison records do not advance event time (max good ts is 6).
    expect(checkpoint?.watermark).toBe(5);

    // The key is healthy afterwards.
    await driver.send([click({ user: 'a', ts: 8 })]);
    await driver.advanceWatermark(1_000);
    expect(driver.values('out').slice(3)).toEqual([
      { user: 'a', count: 2 },
      { timer: 101, user: 'a', count: 2 },
      { timer: 101, user: 'b', count: 2 },
      { timer: 106, user: 'b', count: 2 },
      { timer: 108, user: 'a', count: 2 },
    ]);
  });

  it('a map after a keyed operator that throws rolls back the operator state for that record', async () => {
    const p = pipeline('dl');
    const counted = p
      .source<Click>()
      .keyBy((c) => c.user)
      .process(counter);
    counted
      .map((r) => {
        if (r.user === 'bad' && r.count === 2) throw new Error('second bad count');
        return r;
      })
      .sink('out');
    const driver = new TestDriver(p);
    await driver.send([
      click({ user: 'bad', ts: 1 }),
      click({ user: 'bad', ts: 2 }),
      click({ user: 'ok', ts: 3 }),
      click({ user: 'bad', ts: 4 }),
    ]);
    expect(letters(driver).map((l) => [l.reason, l.sequenceNumber, l.message])).toEqual([
      ['user-function', '2', 'Error: second bad count'],
      ['user-function', '4', 'Error: second bad count'],
    ]);
    expect(driver.values('out')).toEqual([
      { user: 'bad', count: 1 },
      { user: 'ok', count: 1 },
    ]);
    expect(await driver.state('process-0', 'bad')).toEqual({ count: [1] });
  });

  it('a sliding-window record that updates its first window and then throws changes nothing', async () => {
    // add() throws for a poison element joining a window that already has content. Windows are
    // visited latest first, so a poison element at ts 15 first creates window [10, 30) and then
    // throws in window [0, 20), which already holds the element at ts 5.
    const addOnce: AggregateFunction<Click, number, number> = {
      create: () => 0,
      add: (c, acc) => {
        if (c.poison && acc > 0) throw new Error(`poison joined a window with ${acc}`);
        return acc + 1;
      },
      merge: (a, b) => a + b,
      result: (acc) => acc,
    };
    const p = pipeline('dl');
    p.source<Click>()
      .withTimestamps((c) => c.ts, boundedOutOfOrderness(0))
      .keyBy((c) => c.user)
      .window(sliding({ size: 20, slide: 10 }))
      .aggregate(addOnce, ({ key, window, result }: WindowResult<string, number>) => ({
        key,
        start: window.start,
        end: window.end,
        result,
      }))
      .sink('out');
    const driver = new TestDriver(p);
    await driver.send([click({ user: 'a', ts: 5 })]);
    const stateBefore = await driver.state('window-0', 'a');
    const timersBefore = await driver.timers();
    // Window accumulators are listed by window start.
    expect(stateBefore).toEqual({
      w: [
        [-10, 1],
        [0, 1],
      ],
    });
    expect(timersBefore.map((t) => [t.time, t.key, t.namespace])).toEqual([
      [9, 'a', -10],
      [19, 'a', 0],
    ]);

    await driver.send([click({ user: 'a', ts: 15, poison: true }), click({ user: 'b', ts: 6 })]);
    expect(letters(driver).map((l) => [l.reason, l.sequenceNumber, l.partitionKey, l.message])).toEqual([
      ['user-function', '2', 'a', 'Error: poison joined a window with 1'],
    ]);
    expect(await driver.state('window-0', 'a')).toEqual(stateBefore);
    expect((await driver.timers()).filter((t) => t.key === 'a')).toEqual(timersBefore);
    expect(await driver.state('window-0', 'b')).toEqual({
      w: [
        [-10, 1],
        [0, 1],
      ],
    });
    expect(await driver.checkpoint()).toMatchObject({ position: '3', watermark: 5 });

    await driver.advanceWatermark(100);
    expect(driver.values('out')).toEqual([
      { key: 'a', start: -10, end: 10, result: 1 },
      { key: 'b', start: -10, end: 10, result: 1 },
      { key: 'a', start: 0, end: 20, result: 1 },
      { key: 'b', start: 0, end: 20, result: 1 },
    ]);
  });

  it('a window aggregate that throws for one key dead-letters only that key', async () => {
    const p = pipeline('dl');
    p.source<Click>()
      .withTimestamps((c) => c.ts, boundedOutOfOrderness(0))
      .keyBy((c) => c.user)
      .window(tumbling({ size: 10 }))
      .aggregate({
        ...count<Click>(),
        add: (c: Click, acc: number) => {
          if (c.user === 'bad') throw new TypeError('cannot count bad');
          return acc + 1;
        },
      })
      .sink('out');
    const driver = new TestDriver(p);
    await driver.send([
      click({ user: 'ok', ts: 1 }),
      click({ user: 'bad', ts: 2 }),
      click({ user: 'ok', ts: 3 }),
      click({ user: 'bad', ts: 4 }),
    ]);
    await driver.advanceWatermark(9);
    expect(driver.values('out')).toEqual([{ key: 'ok', window: { start: 0, end: 10 }, result: 2 }]);
    expect(letters(driver).map((l) => [l.reason, l.sequenceNumber, l.message])).toEqual([
      ['user-function', '2', 'TypeError: cannot count bad'],
      ['user-function', '4', 'TypeError: cannot count bad'],
    ]);
    expect(await driver.state('window-0', 'bad')).toBeUndefined();
    expect((await driver.timers()).some((t) => t.key === 'bad')).toBe(false);
  });

  it('a batch of only bad records still advances the checkpoint position', async () => {
    const driver = counterDriver();
    await driver.send([click({ user: 'u', ts: 1 })]);
    await driver.send([
      { partitionKey: 'u', data: 'not json' },
      { partitionKey: 'u', data: json({ user: 'u' }) },
    ]);
    expect(await driver.checkpoint()).toMatchObject({ position: '3', commitNumber: 2, watermark: 0 });
    expect(letters(driver).map((l) => [l.reason, l.sequenceNumber])).toEqual([
      ['deserialize', '2'],
      ['timestamp', '3'],
    ]);
    // The records are not re-processed after a restart.
    driver.restart();
    await driver.send([click({ user: 'u', ts: 2 })]);
    expect(letters(driver)).toHaveLength(2);
    expect(driver.values('out')).toEqual([
      { user: 'u', count: 1 },
      { user: 'u', count: 2 },
    ]);
  });
});

describe('a window firing that fails', () => {
  const failing = (build: (keyed: ReturnType<typeof clicks>) => void): TestDriver => {
    const p = pipeline('dl');
    build(clicks(p));
    return new TestDriver(p);
  };
  const clicks = (p: ReturnType<typeof pipeline>) =>
    p
      .source<Click>()
      .withTimestamps((c) => c.ts, boundedOutOfOrderness(0))
      .keyBy((c) => c.user);
  const unless = (bad: string) => (r: WindowResult<string, number>) => {
    if (r.key === bad) throw new Error(`no result for ${r.key}`);
    return `${r.key}@${r.window.start}:${r.result}${r.early ? ' (early)' : ''}`;
  };

  it('is dead-lettered, and its window is still cleaned up (tumbling, lateness 0: one timer fires and cleans)', async () => {
    const driver = failing((k) =>
      k
        .window(tumbling({ size: 10 }))
        .aggregate(count(), unless('bad'))
        .sink('out'),
    );
    await driver.send([click({ user: 'bad', ts: 1 }), click({ user: 'ok', ts: 2 })]);
    await driver.advanceWatermark(1_000);
    expect(driver.values('out')).toEqual(['ok@0:1']);
    expect(letters(driver)).toEqual([
      {
        reason: 'timer',
        message: 'Error: no result for bad',
        shardId: SHARD,
        operator: 'window-0',
        key: 'bad',
        time: 9,
        namespace: 0,
      },
    ]);
    expect(await driver.state('window-0', 'bad')).toBeUndefined();
    expect(await driver.timers()).toEqual([]);
  });

  it('is dead-lettered, and its session is still cleaned up (the cleanup timer is set by the firing)', async () => {
    const driver = failing((k) =>
      k
        .window(session({ gap: 10 }))
        .allowedLateness(5)
        .aggregate(count(), unless('bad'))
        .sink('out'),
    );
    await driver.send([click({ user: 'bad', ts: 1 }), click({ user: 'ok', ts: 2 })]);
    await driver.advanceWatermark(1_000);
    expect(driver.values('out')).toEqual(['ok@2:1']);
    expect(letters(driver).map((l) => [l.reason, l.key, l.time])).toEqual([['timer', 'bad', 10]]);
    expect(await driver.state('window-0', 'bad')).toBeUndefined();
    expect(await driver.timers()).toEqual([]);
  });

  it('early: the next early firings still happen', async () => {
    let failures = 1;
    const driver = failing((k) =>
      k
        .window(tumbling({ size: 10 }))
        .earlyFiring(2)
        .aggregate(count(), (r) => {
          if (r.early && failures-- > 0) throw new Error('once');
          return `${r.result}${r.early ? 'e' : ''}`;
        })
        .sink('out'),
    );
    await driver.send([click({ user: 'a', ts: 0 })]);
    for (let wm = 1; wm <= 12; wm++) await driver.advanceWatermark(wm);
    // Early firings at 1 (failed), 3, 5 and 7; the end firing at 9.
    expect(driver.values('out')).toEqual(['1e', '1e', '1e', '1']);
    expect(letters(driver).map((l) => [l.reason, l.time])).toEqual([['timer', 1]]);
  });

  it("a window function cannot change another key's window: the shared window is frozen", async () => {
    const driver = failing((k) =>
      k
        .window(tumbling({ size: 10 }))
        .aggregate(count(), (r) => {
          if (r.key === 'b') (r.window as { end: number }).end -= 1;
          return `${r.key}:${r.window.start}-${r.window.end}`;
        })
        .sink('out'),
    );
    await driver.send([
      click({ user: 'a', ts: 1 }),
      click({ user: 'b', ts: 2 }),
      click({ user: 'c', ts: 3 }),
    ]);
    await driver.advanceWatermark(100);
    expect(driver.values('out')).toEqual(['a:0-10', 'c:0-10']);
    expect(letters(driver).map((l) => [l.key, l.message])).toEqual([
      ['b', "TypeError: Cannot assign to read only property 'end' of object '#<Object>'"],
    ]);
  });
});

describe('dead letters from timers', () => {
  it('onTimer throwing dead-letters with reason "timer"; its effects roll back and processing continues', async () => {
    const p = pipeline('dl');
    p.source<Click>()
      .withTimestamps((c) => c.ts, boundedOutOfOrderness(0))
      .keyBy((c) => c.user)
      .process({
        state: { fired: valueState<number>() },
        processElement(c, ctx) {
          ctx.timers.registerEventTimeTimer(c.ts + 10, c.poison ? 'poison' : '');
        },
        onTimer(timer, ctx) {
          ctx.state.fired.update((ctx.state.fired.value() ?? 0) + 1);
          ctx.emit({ user: ctx.key, timer: timer.time });
          ctx.timers.registerEventTimeTimer(timer.time + 1_000, 'follow-up');
          if (timer.namespace === 'poison') throw new Error(`timer of ${ctx.key} failed`);
        },
      })
      .sink('out');
    const driver = new TestDriver(p);
    await driver.send([
      click({ user: 'a', ts: 0, poison: true }),
      click({ user: 'b', ts: 0 }),
      click({ user: 'a', ts: 5 }),
    ]);
    await driver.advanceWatermark(20);
    expect(letters(driver)).toEqual([
      {
        reason: 'timer',
        message: 'Error: timer of a failed',
        shardId: SHARD,
        operator: 'process-0',
        key: 'a',
        time: 10,
        namespace: 'poison',
      },
    ]);
    expect(driver.values('out')).toEqual([
      { user: 'b', timer: 10 },
      { user: 'a', timer: 15 },
    ]);
    expect(await driver.state('process-0', 'a')).toEqual({ fired: [1] });
    expect(await driver.state('process-0', 'b')).toEqual({ fired: [1] });
    expect(await driver.timers()).toEqual([
      { operator: 'process-0', domain: 'event', time: 1_010, key: 'b', namespace: 'follow-up' },
      { operator: 'process-0', domain: 'event', time: 1_015, key: 'a', namespace: 'follow-up' },
    ]);
    // The shard keeps moving.
    await driver.send([click({ user: 'c', ts: 30 })]);
    expect((await driver.checkpoint())?.position).toBe('4');
    expect(await driver.timers()).toContainEqual({
      operator: 'process-0',
      domain: 'event',
      time: 40,
      key: 'c',
      namespace: '',
    });
  });
});

describe('dead-letter payloads', () => {
  it('keeps UTF-8 bytes as text and non-UTF-8 bytes as base64', async () => {
    const driver = counterDriver();
    const binary = new Uint8Array([0xff, 0xfe, 0x00, 0x01]);
    const text = new TextEncoder().encode('héllo {');
    await driver.send([
      { partitionKey: 'bin', data: binary, arrival: 7 },
      { partitionKey: 'txt', data: text, arrival: 7 },
      { partitionKey: 'ok', data: new TextEncoder().encode(json({ user: 'ok', ts: 1 })), arrival: 7 },
    ]);
    const [bin, txt] = letters(driver);
    expect(bin).toEqual({
      reason: 'deserialize',
      message: expect.stringMatching(/^TypeError: /),
      shardId: SHARD,
      sequenceNumber: '1',
      partitionKey: 'bin',
      arrivalTime: 7,
      dataBase64: '//4AAQ==',
    });
    expect(bin).not.toHaveProperty('data');
    expect(txt).toEqual({
      reason: 'deserialize',
      message: expect.stringMatching(/^SyntaxError: /),
      shardId: SHARD,
      sequenceNumber: '2',
      partitionKey: 'txt',
      arrivalTime: 7,
      data: 'héllo {',
    });
    expect(txt).not.toHaveProperty('dataBase64');
    expect(driver.values('out')).toEqual([{ user: 'ok', count: 1 }]);
  });

  it('reports the shard of the record', async () => {
    const p = pipeline('dl');
    p.source<Click>()
      .withTimestamps((c) => c.ts, boundedOutOfOrderness(0))
      .keyBy((c) => c.user)
      .process(counter)
      .sink('out');
    const driver = new TestDriver(p, { shards: 3 });
    await driver.send([{ partitionKey: 'x', data: '[', shard: 'shardId-000000000002' }]);
    expect(letters(driver).map((l) => [l.shardId, l.sequenceNumber])).toEqual([
      ['shardId-000000000002', '1'],
    ]);
    expect((await driver.checkpoint('shardId-000000000002'))?.position).toBe('1');
    expect(await driver.checkpoint('shardId-000000000000')).toBeUndefined();
  });
});
