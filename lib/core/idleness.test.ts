/**
 * withIdleness: a shard that received no records for the idle timeout (processing time,
 * driven by record arrival times and TestDriver.advanceProcessingTime) advances its watermark
 * from max ts - bound - 1 by the processing time elapsed beyond the timeout, so the final
 * windows of a quiet shard fire.
 */
import { describe, expect, it } from 'vitest';
import { collect } from './aggregates.ts';
import { DEFAULT_LATE_SINK, pipeline } from './dsl.ts';
import { type DriverRecord, TestDriver } from './testing/test-driver.ts';
import { boundedOutOfOrderness, type WatermarkStrategy, withIdleness } from './watermarks.ts';
import type { WindowResult } from './window-operator.ts';
import { session, tumbling, type WindowAssigner } from './windows.ts';

interface Ev {
  readonly k: string;
  readonly ts: number;
}

const BOUND = 100;
const IDLE = 5_000;

/** A JSON record of key `k` at event time `ts`, arriving at processing time `arrival`. */
const ev = (k: string, ts: number, arrival: number, shard?: string): DriverRecord => ({
  partitionKey: k,
  data: JSON.stringify({ k, ts }),
  arrival,
  ...(shard === undefined ? {} : { shard }),
});

const show = ({ key, window, result }: WindowResult<string, Ev[]>): string =>
  `${key}[${window.start},${window.end})=${result
    .map((x) => x.ts)
    .sort((a, b) => a - b)
    .join(',')}`;

function driver(
  options: { watermarks?: WatermarkStrategy; assigner?: WindowAssigner; shards?: number } = {},
): TestDriver {
  const p = pipeline('idleness');
  p.source<Ev>()
    .withTimestamps((x) => x.ts, options.watermarks ?? withIdleness(boundedOutOfOrderness(BOUND), IDLE))
    .keyBy((x) => x.k)
    .window(options.assigner ?? tumbling({ size: 1000 }))
    .aggregate(collect<Ev>(), show)
    .sink('out');
  return new TestDriver(p, { shards: options.shards ?? 1 });
}

const out = (d: TestDriver): string[] => d.values<string>('out');

describe('withIdleness', () => {
  it('advances an idle shard by the processing time beyond the timeout, so the final window fires', async () => {
    const d = driver();
    await d.send([ev('a', 1200, 10_000)]);
    expect(await d.watermark()).toBe(1200 - BOUND - 1);
    expect((await d.checkpoint())?.lastRecordAt).toBe(10_000);

    // No advance before, or exactly at, the timeout.
    await d.advanceProcessingTime(12_000);
    expect(await d.watermark()).toBe(1099);
    await d.advanceProcessingTime(14_999);
    expect(await d.watermark()).toBe(1099);
    await d.advanceProcessingTime(15_000);
    expect(await d.watermark()).toBe(1099);

    // 1 ms past the timeout: 1 ms of event time.
    await d.advanceProcessingTime(15_001);
    expect(await d.watermark()).toBe(1100);
    await d.advanceProcessingTime(15_899);
    expect(await d.watermark()).toBe(1998);
    expect(out(d)).toEqual([]);

    await d.advanceProcessingTime(15_900);
    expect(await d.watermark()).toBe(1999);
    expect(out(d)).toEqual(['a[1000,2000)=1200']);
    expect(await d.state('window-0', 'a')).toBeUndefined();
    expect(await d.timers()).toEqual([]);
  });

  it('advances from max ts - bound - 1 by the idle time (not cumulatively)', async () => {
    const d = driver();
    await d.send([ev('a', 1200, 10_000), ev('a', 900, 10_000)]);
    await d.advanceProcessingTime(16_000);
    expect(await d.watermark()).toBe(1099 + 1000);
    await d.advanceProcessingTime(16_500);
    expect(await d.watermark()).toBe(1099 + 1500);
    // Processing time does not go backwards, and neither does the watermark.
    await d.advanceProcessingTime(15_000);
    expect(await d.watermark()).toBe(1099 + 1500);
  });

  it('does not advance without withIdleness', async () => {
    const d = driver({ watermarks: boundedOutOfOrderness(BOUND) });
    await d.send([ev('a', 1200, 10_000)]);
    await d.advanceProcessingTime(1_000_000_000);
    expect(await d.watermark()).toBe(1099);
    expect(out(d)).toEqual([]);
  });

  it('does not advance a shard that never received a record', async () => {
    const d = driver();
    await d.advanceProcessingTime(1_000_000);
    expect(await d.watermark()).toBe(Number.NEGATIVE_INFINITY);
  });

  it('every record restarts the idle clock, even one that does not raise the max timestamp', async () => {
    const d = driver();
    await d.send([ev('a', 1200, 10_000)]);
    await d.send([ev('a', 1000, 14_000)]);
    expect(await d.watermark()).toBe(1099);
    await d.advanceProcessingTime(19_000);
    expect(await d.watermark()).toBe(1099);
    await d.advanceProcessingTime(19_100);
    expect(await d.watermark()).toBe(1199);

    // ts=1300 raises the max timestamp to where idleness already took the watermark.
    await d.send([ev('a', 1300, 19_100)]);
    expect(await d.watermark()).toBe(1199);
    await d.advanceProcessingTime(24_100);
    expect(await d.watermark()).toBe(1199);
    await d.advanceProcessingTime(24_800);
    expect(await d.watermark()).toBe(1199 + 700);
    await d.advanceProcessingTime(24_900);
    expect(await d.watermark()).toBe(1999);
    expect(out(d)).toEqual(['a[1000,2000)=1000,1200,1300']);
  });

  it('shards go idle independently', async () => {
    const d = driver({ shards: 2 });
    const [s0, s1] = d.shardIds as [string, string];
    await d.send([ev('a', 1200, 10_000, s0)]);
    await d.send([ev('b', 1500, 12_000, s1)]);
    await d.advanceProcessingTime(16_000);
    expect(await d.watermark(s0)).toBe(1099 + 1000);
    expect(await d.watermark(s1)).toBe(1399);
    expect(out(d)).toEqual(['a[1000,2000)=1200']);
    await d.advanceProcessingTime(17_600);
    expect(await d.watermark(s1)).toBe(1399 + 600);
    expect(out(d)).toEqual(['a[1000,2000)=1200', 'b[1000,2000)=1500']);
  });

  it('fires the final session window of a quiet key', async () => {
    const d = driver({ assigner: session({ gap: 300 }) });
    await d.send([ev('a', 1000, 10_000), ev('a', 1200, 10_000)]);
    expect(await d.watermark()).toBe(1099);
    // The session [1000,1500) fires at WM 1499: 400 ms of idleness past the timeout.
    await d.advanceProcessingTime(15_399);
    expect(out(d)).toEqual([]);
    await d.advanceProcessingTime(15_400);
    expect(out(d)).toEqual(['a[1000,1500)=1000,1200']);
  });

  it('survives restarts: the last record time is part of the checkpoint', async () => {
    const d = driver();
    await d.send([ev('a', 1200, 10_000)]);
    d.restart();
    await d.advanceProcessingTime(15_000);
    d.restart();
    expect(await d.watermark()).toBe(1099);
    await d.advanceProcessingTime(15_900);
    expect(out(d)).toEqual(['a[1000,2000)=1200']);
  });

  it('a record arriving after an idle period sees the watermark idleness reached at its arrival', async () => {
    // Whether or not processing time was advanced before the record, the result is the same.
    const results: Array<{ out: string[]; late: unknown[]; wm: number }> = [];
    for (const tickFirst of [false, true]) {
      const d = driver();
      await d.send([ev('a', 1200, 10_000)]);
      if (tickFirst) await d.advanceProcessingTime(16_000);
      await d.send([ev('a', 1900, 16_000)]);
      results.push({ out: out(d), late: d.values(DEFAULT_LATE_SINK), wm: await d.watermark() });
    }
    expect(results[0]).toEqual({
      out: ['a[1000,2000)=1200'],
      late: [{ k: 'a', ts: 1900 }],
      wm: 2099,
    });
    expect(results[1]).toEqual(results[0]);
  });

  it('records that arrived before the timeout are not made late by a batch read later', async () => {
    // Record 1 arrives 2 s after the last one (not idle); record 2 arrives 4 s after record 1
    // (not idle either). Reading both in one batch must not treat the shard as idle.
    const separate = driver();
    await separate.send([ev('a', 1200, 10_000)]);
    await separate.send([ev('a', 1900, 12_000)]);
    await separate.send([ev('a', 1950, 16_000)]);

    const batched = driver();
    await batched.send([ev('a', 1200, 10_000)]);
    await batched.send([ev('a', 1900, 12_000), ev('a', 1950, 16_000)]);

    for (const [name, d] of [
      ['separate', separate],
      ['batched', batched],
    ] as const) {
      expect({ name, wm: await d.watermark() }).toEqual({ name, wm: 1950 - BOUND - 1 });
      expect({ name, late: d.values(DEFAULT_LATE_SINK) }).toEqual({ name, late: [] });
      expect({ name, out: out(d) }).toEqual({ name, out: [] });
    }
    await batched.advanceWatermark(1999);
    expect(out(batched)).toEqual(['a[1000,2000)=1200,1900,1950']);
  });
});
