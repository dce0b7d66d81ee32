/**
 * An output is what was emitted when it was emitted. A process function that emits its state
 * object, or a window whose result is its accumulator, emits an object that later records change
 * in place; such outputs are copied when emitted, so what is published does not depend on
 * whether a commit fell in between.
 */
import { describe, expect, it } from 'vitest';
import type { AggregateFunction } from './aggregates.ts';
import { DEAD_LETTER_SINK, type Pipeline, pipeline } from './dsl.ts';
import { listState, valueState } from './state.ts';
import { type DriverRecord, TestDriver } from './testing/test-driver.ts';
import { boundedOutOfOrderness } from './watermarks.ts';
import { tumbling } from './windows.ts';

interface Visit {
  readonly user: string;
  readonly ts: number;
}

const visits: DriverRecord[] = [1, 2, 3, 4].map((ts) => ({
  partitionKey: 'ana',
  data: JSON.stringify({ user: 'ana', ts }),
  arrival: ts,
}));

/** All records in one batch (one commit), and one batch per record. */
async function oneCommitAndPerRecord(p: () => Pipeline, sink: string): Promise<[unknown[], unknown[]]> {
  const together = new TestDriver(p());
  await together.send(visits);
  await together.advanceWatermark(Number.POSITIVE_INFINITY);
  const apart = new TestDriver(p());
  for (const v of visits) await apart.send([v]);
  await apart.advanceWatermark(Number.POSITIVE_INFINITY);
  expect(together.values(DEAD_LETTER_SINK)).toEqual([]);
  return [together.values(sink), apart.values(sink)];
}

describe('outputs are snapshots', () => {
  it('a state object emitted by reference and changed in place by a later record of the same commit', async () => {
    const counting = (): Pipeline => {
      const p = pipeline('visits');
      p.source<Visit>()
        .withTimestamps((v) => v.ts, boundedOutOfOrderness(0))
        .keyBy((v) => v.user)
        .process<{ n: number }, { visits: ReturnType<typeof valueState<{ n: number }>> }>({
          state: { visits: valueState<{ n: number }>() },
          processElement(_v, ctx) {
            const visits = ctx.state.visits.value();
            if (visits === undefined) {
              const first = { n: 1 };
              ctx.state.visits.update(first);
              ctx.emit(first); // written, then emitted
            } else {
              visits.n++; // read, changed in place, written back
              ctx.state.visits.update(visits);
              ctx.emit(visits);
            }
          },
        })
        .sink('visits');
      return p;
    };
    const [together, apart] = await oneCommitAndPerRecord(counting, 'visits');
    expect(together).toEqual([{ n: 1 }, { n: 2 }, { n: 3 }, { n: 4 }]);
    expect(together).toEqual(apart);
  });

  it('an object emitted and then written into state, changed in place by a later record', async () => {
    const counting = (): Pipeline => {
      const p = pipeline('visits');
      p.source<Visit>()
        .withTimestamps((v) => v.ts, boundedOutOfOrderness(0))
        .keyBy((v) => v.user)
        .process<{ first: { n: number } }, { visits: ReturnType<typeof valueState<{ n: number }>> }>({
          state: { visits: valueState<{ n: number }>() },
          processElement(_v, ctx) {
            const visits = ctx.state.visits.value();
            if (visits === undefined) {
              const first = { n: 1 };
              ctx.emit({ first }); // emitted (inside another object), then written
              ctx.state.visits.update(first);
            } else {
              visits.n++;
              ctx.state.visits.update(visits);
            }
          },
        })
        .sink('visits');
      return p;
    };
    const [together, apart] = await oneCommitAndPerRecord(counting, 'visits');
    expect(together).toEqual([{ first: { n: 1 } }]);
    expect(together).toEqual(apart);
  });

  it('a list element emitted and then changed in place', async () => {
    const listing = (): Pipeline => {
      const p = pipeline('lists');
      p.source<Visit>()
        .withTimestamps((v) => v.ts, boundedOutOfOrderness(0))
        .keyBy((v) => v.user)
        .process<{ seen: number[] }, { all: ReturnType<typeof listState<{ seen: number[] }>> }>({
          state: { all: listState<{ seen: number[] }>() },
          processElement(v, ctx) {
            const [head] = ctx.state.all.get();
            if (head === undefined) ctx.state.all.add({ seen: [v.ts] });
            else head.seen.push(v.ts); // in place, never written back: lost at a restart
            ctx.output('heads', ctx.state.all.get()[0]);
          },
        })
        .sink('none');
      return p;
    };
    const [together, apart] = await oneCommitAndPerRecord(listing, 'heads');
    // The in-place changes stay in the cached state until a restart (docs/dsl.md); each output
    // is the element as it was when it was emitted.
    expect(together).toEqual([{ seen: [1] }, { seen: [1, 2] }, { seen: [1, 2, 3] }, { seen: [1, 2, 3, 4] }]);
    expect(together).toEqual(apart);
  });

  it('a window whose result is its accumulator, re-fired by a late element within the lateness', async () => {
    const inPlace: AggregateFunction<Visit, { n: number }, { n: number }> = {
      create: () => ({ n: 0 }),
      add(_v, acc) {
        acc.n++;
        return acc;
      },
      result: (acc) => acc,
    };
    const windows = (): Pipeline => {
      const p = pipeline('windows');
      p.source<Visit>()
        .withTimestamps((v) => v.ts, boundedOutOfOrderness(0))
        .keyBy((v) => v.user)
        .window(tumbling({ size: 3 }))
        .allowedLateness(100)
        .aggregate(inPlace, ({ window, result }) => ({ start: window.start, result }))
        .sink('counts');
      return p;
    };
    const late: DriverRecord = {
      partitionKey: 'ana',
      data: JSON.stringify({ user: 'ana', ts: 0 }),
      arrival: 9,
    };
    const run = async (split: boolean): Promise<unknown[]> => {
      const driver = new TestDriver(windows());
      if (split) {
        await driver.send(visits);
        await driver.send([late]);
      } else await driver.send([...visits, late]);
      return driver.values('counts');
    };
    // ts 3 fires [0, 3) with 2 elements; the late element at 0 re-fires it with 3.
    expect(await run(false)).toEqual([
      { start: 0, result: { n: 2 } },
      { start: 0, result: { n: 3 } },
    ]);
    expect(await run(true)).toEqual(await run(false));
  });
});
