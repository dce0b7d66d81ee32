/**
 * A record that fails is dead-lettered with no effect, even when it changed a state object in
 * place before it failed. The journal restores which object a state holds, not the object's
 * contents, so outside the checked pass such a failure stops the task (RollbackNeedsReplayError)
 * and the batch runs again from the last commit in the checked pass, where state values are
 * copies. Results then equal those of a run without the record, and do not depend on restarts.
 */
import { describe, expect, it } from 'vitest';
import type { AggregateFunction } from './aggregates.ts';
import { compile } from './compile.ts';
import { DEAD_LETTER_SINK, type Pipeline, pipeline } from './dsl.ts';
import { RollbackNeedsReplayError } from './errors.ts';
import { MemoryBackend } from './memory-backend.ts';
import type { SourceRecord } from './ports.ts';
import { type DeadLetter, ShardTask } from './shard-task.ts';
import { mapState, valueState } from './state.ts';
import { type DriverRecord, TestDriver } from './testing/test-driver.ts';
import { boundedOutOfOrderness } from './watermarks.ts';
import { tumbling } from './windows.ts';

interface Buy {
  readonly user: string;
  readonly ts: number;
  readonly id: number;
  /** A poison buy has no amount: reading amount.cents throws. */
  readonly amount?: { readonly cents: number };
}

interface Basket {
  count: number;
  cents: number;
  ids: number[];
}

const SHARD = 'shardId-000000000000';
const buy = (user: string, id: number, cents?: number): Buy =>
  cents === undefined ? { user, ts: id, id } : { user, ts: id, id, amount: { cents } };
/** A batch for a ShardTask: JSON bytes, sequence numbers from the ids. */
const sourceRecords = (buys: readonly Buy[]): SourceRecord[] =>
  buys.map((b) => ({
    data: new TextEncoder().encode(JSON.stringify(b)),
    partitionKey: b.user,
    sequenceNumber: String(b.id),
    arrivalTime: 1_000 + b.id,
  }));
const record = (b: Buy): DriverRecord => ({
  partitionKey: b.user,
  data: JSON.stringify(b),
  arrival: 1_000 + b.id,
});

/** Keeps a basket per user in a value state, changing it in place (as Flink users often do). */
function basketPipeline(): Pipeline {
  const p = pipeline('baskets');
  p.source<Buy>()
    .withTimestamps((b) => b.ts, boundedOutOfOrderness(0))
    .keyBy((b) => b.user)
    .process<Basket & { user: string }, { basket: ReturnType<typeof valueState<Basket>> }>({
      state: { basket: valueState<Basket>() },
      processElement(b, ctx) {
        const basket = ctx.state.basket.value() ?? { count: 0, cents: 0, ids: [] };
        basket.count++;
        basket.ids.push(b.id);
        basket.cents += b.amount!.cents; // throws for a poison buy, after the two changes above
        ctx.state.basket.update(basket);
        ctx.emit({ user: ctx.key as string, ...basket, ids: [...basket.ids] });
      },
    })
    .sink('baskets');
  return p;
}

const BUYS = [buy('ana', 1, 100), buy('bo', 2, 5), buy('ana', 3, 200), buy('ana', 4), buy('ana', 5, 300)];

describe('a record that changed state in place and then failed', () => {
  it('is dead-lettered with no effect on the state: the next record sees the state before it', async () => {
    const driver = new TestDriver(basketPipeline());
    await driver.send(BUYS.map(record));
    expect(driver.values(DEAD_LETTER_SINK)).toEqual([
      expect.objectContaining({ reason: 'user-function', sequenceNumber: '4', partitionKey: 'ana' }),
    ]);
    expect(driver.values('baskets')).toEqual([
      { user: 'ana', count: 1, cents: 100, ids: [1] },
      { user: 'bo', count: 1, cents: 5, ids: [2] },
      { user: 'ana', count: 2, cents: 300, ids: [1, 3] },
      { user: 'ana', count: 3, cents: 600, ids: [1, 3, 5] },
    ]);
    expect(await driver.state('process-0', 'ana')).toEqual({
      basket: [{ count: 3, cents: 600, ids: [1, 3, 5] }],
    });
  });

  it('gives the same results with a restart at any point, and as without the record', async () => {
    const reference = new TestDriver(basketPipeline());
    await reference.send(BUYS.filter((b) => b.amount !== undefined).map(record));
    for (let at = 0; at <= BUYS.length; at++) {
      const driver = new TestDriver(basketPipeline());
      await driver.send(BUYS.slice(0, at).map(record));
      driver.restart();
      await driver.send(BUYS.slice(at).map(record));
      expect(driver.values('baskets')).toEqual(reference.values('baskets'));
      expect(await driver.state('process-0', 'ana')).toEqual(await reference.state('process-0', 'ana'));
    }
  });

  it('stops a task outside the checked pass with RollbackNeedsReplayError; the checked pass dead-letters it', async () => {
    const plan = compile(basketPipeline());
    const batch = sourceRecords(BUYS);
    const backend = new MemoryBackend();
    const error = await new ShardTask(plan, SHARD).processBatch(batch, backend, 0).catch((e: unknown) => e);
    expect(error).toBeInstanceOf(RollbackNeedsReplayError);
    expect((error as Error).message).toMatch(
      /^the record at sequence number 4 of shard shardId-000000000000 failed after reading state objects it may have changed in place \(TypeError: .*\); .* with the checked option/,
    );
    const checked = await new ShardTask(plan, SHARD, { checked: true }).processBatch(batch, backend, 0);
    expect(
      checked.outputs
        .filter((o) => o.sink === DEAD_LETTER_SINK)
        .map((o) => (o.value as DeadLetter).sequenceNumber),
    ).toEqual(['4']);
  });

  it('needs no replay when the failing record read only numbers and strings', async () => {
    const p = pipeline('counts');
    p.source<Buy>()
      .withTimestamps((b) => b.ts, boundedOutOfOrderness(0))
      .keyBy((b) => b.user)
      .process<number, { n: ReturnType<typeof valueState<number>> }>({
        state: { n: valueState<number>() },
        processElement(b, ctx) {
          const n = (ctx.state.n.value() ?? 0) + b.amount!.cents;
          ctx.state.n.update(n);
          ctx.emit(n);
        },
      })
      .sink('out');
    const batch = sourceRecords(BUYS);
    const result = await new ShardTask(compile(p), SHARD).processBatch(batch, new MemoryBackend(), 0);
    expect(result.outputs.map((o) => o.value)).toEqual([
      100,
      5,
      300,
      expect.objectContaining({ reason: 'user-function' }),
      600,
    ]);
  });

  it('a window aggregate that changes its accumulator in place and throws leaves the window as it was', async () => {
    const sumInPlace: AggregateFunction<Buy, { n: number; cents: number }, { n: number; cents: number }> = {
      create: () => ({ n: 0, cents: 0 }),
      add(b, acc) {
        acc.n++;
        acc.cents += b.amount!.cents;
        return acc;
      },
      result: (acc) => ({ ...acc }),
    };
    const p = pipeline('sums');
    p.source<Buy>()
      .withTimestamps((b) => b.ts, boundedOutOfOrderness(0))
      .keyBy((b) => b.user)
      .window(tumbling({ size: 100 }))
      .aggregate(sumInPlace, ({ key, result }) => ({ key, ...result }))
      .sink('sums');
    const driver = new TestDriver(p);
    await driver.send([...BUYS, buy('ana', 150, 1)].map(record));
    expect(driver.values('sums')).toEqual([
      { key: 'ana', n: 3, cents: 600 },
      { key: 'bo', n: 1, cents: 5 },
    ]);
    expect(driver.values<DeadLetter>(DEAD_LETTER_SINK).map((l) => l.sequenceNumber)).toEqual(['4']);
  });

  it('a timer that changes state in place and throws is dead-lettered with no effect', async () => {
    const p = pipeline('timers');
    p.source<Buy>()
      .withTimestamps((b) => b.ts, boundedOutOfOrderness(0))
      .keyBy((b) => b.user)
      .process<{ user: string; seen: number[] }, { seen: ReturnType<typeof mapState<string, number[]>> }>({
        state: { seen: mapState<string, number[]>() },
        processElement(b, ctx) {
          const ids = ctx.state.seen.get('ids') ?? [];
          ids.push(b.id);
          ctx.state.seen.put('ids', ids);
          ctx.timers.registerEventTimeTimer(b.ts + 10, b.amount === undefined ? 'poison' : 'ok');
        },
        onTimer(timer, ctx) {
          const ids = ctx.state.seen.get('ids')!;
          ids.push(-timer.time);
          if (timer.namespace === 'poison') throw new Error('poison timer');
          ctx.state.seen.put('ids', ids);
          ctx.emit({ user: ctx.key as string, seen: [...ids] });
        },
      })
      .sink('out');
    const driver = new TestDriver(p);
    await driver.send([buy('ana', 1, 1), buy('ana', 2), buy('ana', 30, 1)].map(record));
    expect(driver.values<DeadLetter>(DEAD_LETTER_SINK)).toEqual([
      expect.objectContaining({ reason: 'timer', key: 'ana', time: 12, namespace: 'poison' }),
    ]);
    // The element at 30 is applied before the watermark it brings fires the timers at 11 and 12.
    expect(driver.values('out')).toEqual([{ user: 'ana', seen: [1, 2, 30, -11] }]);
    expect(await driver.state('process-0', 'ana')).toEqual({ seen: [['ids', [1, 2, 30, -11]]] });
  });

  it('the checked pass hands out copies: a change without a write does not reach state', async () => {
    const p = pipeline('copies');
    p.source<Buy>()
      .withTimestamps((b) => b.ts, boundedOutOfOrderness(0))
      .keyBy((b) => b.user)
      .process<number, { basket: ReturnType<typeof valueState<Basket>> }>({
        state: { basket: valueState<Basket>() },
        processElement(b, ctx) {
          const basket = ctx.state.basket.value();
          if (basket === undefined) ctx.state.basket.update({ count: 1, cents: 0, ids: [b.id] });
          else basket.count++; // no update(): lost at a restart, and in the checked pass
          ctx.emit(ctx.state.basket.value()!.count);
        },
      })
      .sink('out');
    const batch = sourceRecords([1, 2, 3].map((id) => buy('ana', id, 1)));
    const checked = await new ShardTask(compile(p), SHARD, { checked: true }).processBatch(
      batch,
      new MemoryBackend(),
      0,
    );
    expect(checked.outputs.map((o) => o.value)).toEqual([1, 1, 1]);
  });
});
