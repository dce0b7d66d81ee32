/** The test driver refuses what would silently stall it: times that are not numbers, records that are not an array. */
import { describe, expect, it } from 'vitest';
import { count } from '../aggregates.ts';
import { pipeline } from '../dsl.ts';
import { ConfigurationError } from '../errors.ts';
import { boundedOutOfOrderness } from '../watermarks.ts';
import { tumbling } from '../windows.ts';
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
