/**
 * The test driver refuses what would silently stall it (times that are not numbers, records
 * that are not an array); stateValues decodes state as savepoint migrations see it; timers()
 * lists by uid while operators fire in definition order; the package export `floe/testing`.
 */
import { TestDriver as ExportedTestDriver } from 'floe/testing';
import { describe, expect, it } from 'vitest';
import { count } from '../aggregates.ts';
import { passthroughDeserializer, pipeline } from '../dsl.ts';
import { ConfigurationError } from '../errors.ts';
import { processFunction } from '../processor.ts';
import { listState, mapState, valueState } from '../state.ts';
import { boundedOutOfOrderness } from '../watermarks.ts';
import { session, tumbling } from '../windows.ts';
import { type DriverRecord, TestDriver } from './test-driver.ts';

function driver(): TestDriver {
  const p = pipeline('driver-args');
  p.source<{ k: string; ts: number }>()
    .withTimestamps((e) => e.ts, boundedOutOfOrderness(0))
    .keyBy((e) => e.k)
    .window(tumbling({ size: 10 }))
    .aggregate(count())
    .sink('out');
  return new TestDriver(p);
}

const bad = <T>(value: unknown): T => value as T;
const rec = (ts: number, arrival?: number): DriverRecord => ({
  partitionKey: 'a',
  data: JSON.stringify({ k: 'a', ts }),
  ...(arrival === undefined ? {} : { arrival }),
});

describe('TestDriver arguments', () => {
  it('refuses a watermark, processing time or arrival that is not a number, saying what it received', async () => {
    const d = driver();
    await d.send([rec(1)]);
    await expect(d.advanceWatermark(bad('100'))).rejects.toThrow(
      new ConfigurationError(
        'advanceWatermark needs a time in epoch milliseconds (a number, or ±Infinity); received "100"',
      ),
    );
    await expect(d.advanceWatermark(Number.NaN)).rejects.toThrow('advanceWatermark needs a time');
    await expect(d.advanceProcessingTime(Number.NaN)).rejects.toThrow('advanceProcessingTime needs a time');
    await expect(d.send([rec(2, Number.NaN)])).rejects.toThrow(
      "a record's arrival needs a time in epoch milliseconds",
    );
    // Nothing was stalled: the windows still fire.
    await d.send([rec(15)]);
    await d.advanceWatermark(100);
    expect(d.values('out')).toEqual([
      { key: 'a', window: { start: 0, end: 10 }, result: 1 },
      { key: 'a', window: { start: 10, end: 20 }, result: 1 },
    ]);
  });

  it('refuses records that are not an array (a single record was ignored)', async () => {
    await expect(driver().send(bad(rec(1)))).rejects.toThrow(
      'send needs an array of records { partitionKey, data, shard?, arrival? }; received {"partitionKey":"a"',
    );
  });
});

describe('TestDriver record data', () => {
  it('is what the deserializer gets: JSON text or bytes by default (an object is dead-lettered), any value with passthroughDeserializer', async () => {
    const json = pipeline('data-json');
    json.source<{ n: number }>().sink('out');
    const d = new TestDriver(json);
    await d.send([
      { partitionKey: 'a', data: JSON.stringify({ n: 1 }) },
      { partitionKey: 'a', data: new TextEncoder().encode('{"n":2}') },
      { partitionKey: 'a', data: { n: 3 } },
    ]);
    expect(d.values('out')).toEqual([{ n: 1 }, { n: 2 }]);
    expect(d.values('floe.dead-letter')).toMatchObject([
      {
        reason: 'deserialize',
        message: 'TypeError: expected the record data as bytes or a JSON string; received {"n":3}',
      },
    ]);

    const passthrough = pipeline('data-passthrough');
    passthrough.source<{ n: number }>({ deserializer: passthroughDeserializer() }).sink('out');
    const p = new TestDriver(passthrough);
    await p.send([{ partitionKey: 'a', data: { n: 3 } }]);
    expect(p.values('out')).toEqual([{ n: 3 }]);
  });
});

interface Use {
  k: string;
  v: number;
  ts: number;
}

/** One process function with value, map and list state, each with and without a TTL of 10 ms. */
function statePipeline() {
  const p = pipeline('state-values');
  p.source<Use>()
    .withTimestamps((e) => e.ts, boundedOutOfOrderness(0))
    .keyBy((e) => e.k)
    .process(
      processFunction<Use, unknown>()({
        state: {
          value: valueState<number>(),
          map: mapState<string, number>(),
          list: listState<number>(),
          ttlValue: valueState<number>({ ttl: 10 }),
          ttlMap: mapState<string, number>({ ttl: 10 }),
          ttlList: listState<number>({ ttl: 10 }),
        },
        processElement(e, ctx) {
          // What the function reads before it writes: TTL state past its TTL reads as absent.
          ctx.emit({ ttlValue: ctx.state.ttlValue.value() ?? null, ttlList: ctx.state.ttlList.get() });
          ctx.state.value.update(e.v);
          ctx.state.map.put(`m${e.v}`, e.v);
          ctx.state.list.add(e.v);
          if (e.v < 10) {
            ctx.state.ttlValue.update(e.v);
            ctx.state.ttlMap.put(`m${e.v}`, e.v);
            ctx.state.ttlList.add(e.v);
          }
        },
      }),
      { uid: 'uses' },
    )
    .sink('reads');
  return p;
}

const use = (v: number, arrival: number): DriverRecord => ({
  partitionKey: 'a',
  data: JSON.stringify({ k: 'a', v, ts: v }),
  arrival,
});

describe('TestDriver.stateValues', () => {
  it('decodes value, map and list state, with and without TTL, to the values (state() keeps the stored form)', async () => {
    const d = new TestDriver(statePipeline());
    await d.send([use(1, 3)]);
    await d.send([use(2, 5)]);
    expect(await d.state('uses', 'a')).toEqual({
      value: [2],
      map: [
        ['m1', 1],
        ['m2', 2],
      ],
      list: [1, 2],
      ttlValue: [2, 5],
      ttlMap: [
        ['m1', 1, 3],
        ['m2', 2, 5],
      ],
      ttlList: [
        [1, 3],
        [2, 5],
      ],
    });
    const values = {
      value: 2,
      map: [
        ['m1', 1],
        ['m2', 2],
      ],
      list: [1, 2],
      ttlValue: 2,
      ttlMap: [
        ['m1', 1],
        ['m2', 2],
      ],
      ttlList: [1, 2],
    };
    expect(await d.stateValues('uses', 'a')).toEqual(values);
    d.restart();
    expect(await d.stateValues('uses', 'a')).toEqual(values);
    expect(await d.stateValues('uses', 'b')).toBeUndefined();
    expect(await d.stateValues('uses', 1)).toBeUndefined();
  });

  it('lists expired TTL values until their key is written again, as a savepoint would carry them', async () => {
    const d = new TestDriver(statePipeline());
    await d.send([use(1, 3)]); // TTL values written at 3 expire at 13
    await d.send([use(2, 10)]); // ttlValue rewritten at 10; the item m1 and list item 1 of 3 are kept
    await d.advanceProcessingTime(13);
    // Nothing wrote the key since: the stored entry, and stateValues, still hold the expired items.
    expect(await d.stateValues('uses', 'a')).toMatchObject({
      ttlValue: 2,
      ttlMap: [
        ['m1', 1],
        ['m2', 2],
      ],
      ttlList: [1, 2],
    });
    // The function reads only the live ones, and its write drops the expired ones.
    await d.send([use(10, 13)]); // v >= 10 writes no TTL state
    expect(d.values('reads').at(-1)).toEqual({ ttlValue: 2, ttlList: [2] });
    expect(await d.stateValues('uses', 'a')).toEqual({
      value: 10,
      map: [
        ['m1', 1],
        ['m2', 2],
        ['m10', 10],
      ],
      list: [1, 2, 10],
      ttlValue: 2,
      ttlMap: [['m2', 2]],
      ttlList: [2],
    });
    await d.send([use(11, 20)]); // everything of the TTL states has expired: they are not stored
    expect(d.values('reads').at(-1)).toEqual({ ttlValue: null, ttlList: [] });
    expect(await d.stateValues('uses', 'a')).toEqual({
      value: 11,
      map: [
        ['m1', 1],
        ['m2', 2],
        ['m10', 10],
        ['m11', 11],
      ],
      list: [1, 2, 10, 11],
    });
  });

  it("decodes a window operator's state: accumulators by window start, sessions with their end", async () => {
    const p = pipeline('window-values');
    const keyed = p
      .source<Use>()
      .withTimestamps((e) => e.ts, boundedOutOfOrderness(20)) // no window fires
      .keyBy((e) => e.k);
    keyed
      .window(tumbling({ size: 10 }))
      .uid('counts')
      .aggregate(count())
      .sink('counts');
    keyed
      .window(session({ gap: 5 }))
      .uid('sessions')
      .aggregate(count())
      .sink('sessions');
    const d = new TestDriver(p);
    await d.send([use(1, 0), use(2, 0), use(12, 0)]);
    expect(await d.state('counts', 'a')).toEqual({
      w: [
        [0, 2],
        [10, 1],
      ],
    });
    expect(await d.stateValues('counts', 'a')).toEqual({
      w: [
        [0, 2],
        [10, 1],
      ],
    });
    // Sessions [1, 7) (1 and 2 merged) and [12, 17).
    expect(await d.stateValues('sessions', 'a')).toEqual({
      w: [
        [1, [7, 2]],
        [12, [17, 1]],
      ],
    });
  });

  it('refuses an operator uid the pipeline does not have, naming the ones it has', async () => {
    const d = new TestDriver(statePipeline());
    await expect(d.stateValues('process-0', 'a')).rejects.toThrow(
      new ConfigurationError(
        'pipeline "state-values" has no keyed operator with uid "process-0" (operators: uses)',
      ),
    );
  });
});

describe('TestDriver.timers', () => {
  it('lists timers by operator uid, while operators fire in definition order', async () => {
    const p = pipeline('timer-order');
    const keyed = p
      .source<Use>()
      .withTimestamps((e) => e.ts, boundedOutOfOrderness(0))
      .keyBy((e) => e.k);
    for (const uid of ['zeta', 'alpha']) {
      keyed
        .process(
          processFunction<Use, string>()({
            processElement(e, ctx) {
              ctx.timers.registerEventTimeTimer(e.ts + 10);
            },
            onTimer(_timer, ctx) {
              ctx.emit(uid);
            },
          }),
          { uid },
        )
        .sink('fired');
    }
    const d = new TestDriver(p);
    await d.send([use(1, 0)]);
    expect((await d.timers()).map((t) => [t.operator, t.time])).toEqual([
      ['alpha', 11],
      ['zeta', 11],
    ]);
    await d.advanceWatermark(11);
    expect(d.values('fired')).toEqual(['zeta', 'alpha']);
    expect(await d.timers()).toEqual([]);
  });
});

describe('the package export', () => {
  it("'floe/testing' is this TestDriver", () => {
    expect(ExportedTestDriver).toBe(TestDriver);
  });
});
