/** The timer log: commits write the timers they changed, fired chunks are deleted, restarts restore. */
import { describe, expect, it } from 'vitest';
import { count } from './aggregates.ts';
import { type ShardCheckpoint, serializeCheckpoint } from './checkpoint.ts';
import { compile, type PipelinePlan } from './compile.ts';
import { passthroughDeserializer, pipeline } from './dsl.ts';
import { ConfigurationError, StateFormatError } from './errors.ts';
import { MemoryBackend } from './memory-backend.ts';
import type { SourceRecord, StateMutation } from './ports.ts';
import { type BatchResult, ShardTask, type ShardTaskOptions } from './shard-task.ts';
import { valueState } from './state.ts';
import { MAX_WATERMARK, minutes } from './time.ts';
import { isTimerChunkAddress, TIMER_CHUNK_OPERATOR, withInlineTimers } from './timer-log.ts';
import { boundedOutOfOrderness } from './watermarks.ts';
import { tumbling } from './windows.ts';

interface Ev {
  readonly key: string;
  readonly ts: number;
}

const SHARD = 'shardId-000000000000';

function tumblingCounts(): PipelinePlan {
  const p = pipeline('timer-log');
  p.source<Ev>({ deserializer: passthroughDeserializer() })
    .withTimestamps((e) => e.ts, boundedOutOfOrderness(0))
    .keyBy((e) => e.key)
    .window(tumbling({ size: minutes(1) }))
    .aggregate(count<Ev>())
    .sink('out');
  return compile(p);
}

/** A timeout per key, pushed back by every element: each element deletes a timer and registers one. */
function timeouts(): PipelinePlan {
  const p = pipeline('timeouts');
  p.source<Ev>({ deserializer: passthroughDeserializer() })
    .withTimestamps((e) => e.ts, boundedOutOfOrderness(0))
    .keyBy((e) => e.key)
    .process<string, { due: ReturnType<typeof valueState<number>> }>({
      state: { due: valueState<number>() },
      processElement(_e, ctx) {
        const due = ctx.state.due.value();
        if (due !== undefined) ctx.timers.deleteEventTimeTimer(due);
        ctx.state.due.update(ctx.timestamp + 1_000);
        ctx.timers.registerEventTimeTimer(ctx.timestamp + 1_000);
      },
      onTimer(timer, ctx) {
        ctx.emit(`${String(ctx.key)}@${timer.time}`);
        ctx.state.due.clear();
      },
    })
    .sink('out');
  return compile(p);
}

let sequence = 0;
const records = (events: readonly Ev[]): SourceRecord[] =>
  events.map((e) => ({
    data: e,
    partitionKey: e.key,
    sequenceNumber: String(++sequence).padStart(20, '0'),
    arrivalTime: e.ts,
  }));

/** A shard task over a MemoryBackend, committing every result as a worker does. */
async function harness(plan: PipelinePlan, options: ShardTaskOptions) {
  const backend = new MemoryBackend();
  const lease = await backend.acquireLease(SHARD, 'test', 0, 2 ** 40);
  let task = new ShardTask(plan, SHARD, options);
  let last: ShardCheckpoint | undefined;
  const outputs: unknown[] = [];
  const commit = async (r: BatchResult): Promise<BatchResult> => {
    if (r.changed) {
      await backend.commit(lease, r);
      last = r.checkpoint;
      outputs.push(...r.outputs.map((o) => o.value));
    }
    return r;
  };
  return {
    backend,
    outputs,
    checkpoint: () => last!,
    send: async (events: readonly Ev[], shardEnded = false) =>
      commit(await task.processBatch(records(events), backend, 0, { shardEnded })),
    watermark: async (w: number) => commit(await task.processWatermark(w, backend, 0)),
    /** Drops the task and starts a new one from the last committed checkpoint. */
    restart: () => {
      task = new ShardTask(plan, last!, options);
    },
  };
}

const chunkWrites = (m: readonly StateMutation[]) =>
  m.filter((x) => isTimerChunkAddress(x.address) && x.value !== null);
const chunkDeletes = (m: readonly StateMutation[]) =>
  m.filter((x) => isTimerChunkAddress(x.address) && x.value === null);
const keys = (n: number, ts: number, prefix = 'k'): Ev[] =>
  Array.from({ length: n }, (_, i) => ({ key: `${prefix}${i}`, ts }));

describe('timer log', () => {
  it('a commit writes the timers it registered, not every pending timer', async () => {
    const h = await harness(tumblingCounts(), { tailOps: 100 });
    const first = await h.send(keys(1_000, 10));
    // 1,000 new window timers: written as chunks (each under the chunk size limit), none inline.
    expect(chunkWrites(first.mutations).length).toBeGreaterThanOrEqual(1);
    expect(first.checkpoint.timers).toEqual([]);
    expect(first.checkpoint.timerLog).toMatchObject({ tail: [], pending: 1_000 });
    // Columns, times relative to the first: one window's timers are mostly a list of keys.
    const chunk = JSON.parse(chunkWrites(first.mutations)[0]!.value!);
    expect(chunk).toMatchObject({ v: 1, operators: ['window-0'], rel: true, t0: 59_999 });
    expect(chunk.key.slice(0, 3)).toEqual(['k0', 'k1', 'k2']);
    expect(new Set(chunk.time)).toEqual(new Set([0]));
    expect(new Set(chunk.ns)).toEqual(new Set([-59_999]));
    expect(chunk.add).toBe('1'.repeat(chunk.key.length));
    expect(serializeCheckpoint(first.checkpoint).length).toBeLessThan(1_000);

    // One more key: one op in the inline tail, no chunk written, the checkpoint stays small.
    const second = await h.send([{ key: 'late-comer', ts: 20 }]);
    expect(chunkWrites(second.mutations)).toEqual([]);
    expect(second.checkpoint.timerLog?.tail).toHaveLength(1);
    expect(second.checkpoint.timerLog?.pending).toBe(1_001);
    expect(serializeCheckpoint(second.checkpoint).length).toBeLessThan(1_000);
    const inline = await withInlineTimers(second.checkpoint, h.backend);
    expect(inline.timerLog).toBeUndefined();
    expect(inline.timers).toHaveLength(1_001);
    expect(inline.timers[0]).toEqual({
      operator: 'window-0',
      domain: 'event',
      time: 59_999,
      key: 'k0',
      namespace: 0,
    });
  });

  it('splits a chunk that would exceed 100,000 characters (long keys), and restores from the pieces', async () => {
    const h = await harness(tumblingCounts(), { tailOps: 10 });
    const long = 'x'.repeat(3_000);
    const first = await h.send(keys(100, 10, long));
    const written = chunkWrites(first.mutations);
    expect(written.length).toBeGreaterThanOrEqual(4); // 100 ops of ~3 KB
    for (const m of written) expect(m.value!.length).toBeLessThanOrEqual(100_000);
    expect(first.checkpoint.timerLog!.chunks.reduce((n, c) => n + c.ops, 0)).toBe(100);
    h.restart();
    await h.watermark(MAX_WATERMARK);
    expect(h.outputs).toHaveLength(100);
  });

  it('deletes a chunk once the watermark passed every timer in it', async () => {
    const h = await harness(tumblingCounts(), { tailOps: 10 });
    const first = await h.send(keys(30, 10));
    const written = chunkWrites(first.mutations).map((m) => m.address);
    expect(written.length).toBeGreaterThanOrEqual(1);
    // Next window: fires the first (the watermark passes 59,999) and registers 30 new timers.
    const next = await h.send(keys(30, 60_000));
    expect(h.outputs).toHaveLength(30);
    expect(chunkDeletes(next.mutations).map((m) => m.address)).toEqual(written);
    expect(next.checkpoint.timerLog?.chunks.map((c) => c.address)).not.toContain(written[0]);
    expect(next.checkpoint.timerLog?.pending).toBe(30);
    // Every chunk left is still referenced and stored; deleted ones are gone from the store.
    const stored = await h.backend.getMany([
      ...written,
      ...next.checkpoint.timerLog!.chunks.map((c) => c.address),
    ]);
    expect([...stored.keys()]).toEqual(next.checkpoint.timerLog!.chunks.map((c) => c.address));
  });

  it('a restarted task restores its timers from the chunks and the tail', async () => {
    const h = await harness(tumblingCounts(), { tailOps: 7 });
    await h.send(keys(50, 10));
    await h.send(keys(3, 20, 'x')); // stays in the tail
    expect(h.checkpoint().timerLog?.chunks.length).toBeGreaterThanOrEqual(1);
    expect(h.checkpoint().timerLog?.tail).toHaveLength(3);
    h.restart();
    await h.watermark(MAX_WATERMARK);
    expect(h.outputs).toHaveLength(53);
    expect(h.checkpoint().timerLog).toMatchObject({ chunks: [], tail: [], pending: 0 });
  });

  it('compacts a log of mostly dead ops (deleted timers) to the pending timers', async () => {
    const options = { tailOps: 4 };
    const h = await harness(timeouts(), options);
    const reference = await harness(timeouts(), {});
    // 20 keys, each pushed back 30 times: 600 registrations and 580 deletions, 20 pending.
    const history: number[] = [];
    for (let round = 0; round < 30; round++) {
      const batch = keys(20, 10 + round);
      await h.send(batch);
      await reference.send(batch);
      const log = h.checkpoint().timerLog!;
      expect(log.pending).toBe(20);
      // At most 4 ops per pending timer, plus this commit's 40 (checked at the next commit).
      const ops = log.tail.length + log.chunks.reduce((n, c) => n + c.ops, 0);
      expect(ops).toBeLessThanOrEqual(4 * 20 + 40);
      history.push(ops);
    }
    // It grows by 40 ops per commit and is compacted back to the 20 pending timers.
    expect(history.slice(0, 4)).toEqual([20, 60, 20, 60]);
    // Compaction deleted chunks that were still in use and rewrote their live timers.
    h.restart();
    await h.watermark(MAX_WATERMARK);
    await reference.watermark(MAX_WATERMARK);
    expect(h.outputs).toHaveLength(20);
    expect(h.outputs).toEqual(reference.outputs);
  });

  it('a finished shard holds every timer inline and deletes its chunks (children take them)', async () => {
    const h = await harness(tumblingCounts(), { tailOps: 5 });
    const first = await h.send(keys(20, 10));
    const chunks = first.checkpoint.timerLog!.chunks.map((c) => c.address);
    const last = await h.send([{ key: 'last', ts: 30 }], true);
    expect(last.checkpoint.finished).toBe(true);
    expect(last.checkpoint.timerLog).toBeUndefined();
    expect(last.checkpoint.timers).toHaveLength(21);
    expect(
      chunkDeletes(last.mutations)
        .map((m) => m.address)
        .sort(),
    ).toEqual([...chunks].sort());
  });

  it('a checkpoint with every timer inline (format 1, savepoints) moves them into the log', async () => {
    const h = await harness(tumblingCounts(), { tailOps: 5 });
    await h.send(keys(20, 10));
    const inline = await withInlineTimers(h.checkpoint(), h.backend);
    const backend = new MemoryBackend();
    const lease = await backend.acquireLease(SHARD, 'test', 0, 2 ** 40);
    const task = new ShardTask(tumblingCounts(), inline, { tailOps: 5 });
    const r = await task.processBatch(records([{ key: 'k0', ts: 11 }]), backend, 0);
    expect(r.checkpoint.timers).toEqual([]);
    expect(r.checkpoint.timerLog?.pending).toBe(20);
    await backend.commit(lease, r);
    expect((await withInlineTimers(r.checkpoint, backend)).timers).toEqual(inline.timers);
  });

  it('a checkpoint whose chunk is missing from the state store is a StateFormatError', async () => {
    const h = await harness(tumblingCounts(), { tailOps: 5 });
    await h.send(keys(20, 10));
    const task = new ShardTask(tumblingCounts(), h.checkpoint(), { tailOps: 5 });
    const empty = new MemoryBackend();
    const attempt = task.processWatermark(MAX_WATERMARK, empty, 0);
    await expect(attempt).rejects.toThrow(StateFormatError);
    await expect(
      new ShardTask(tumblingCounts(), h.checkpoint()).processWatermark(1, empty, 0),
    ).rejects.toThrow(
      `references timer chunk ${TIMER_CHUNK_OPERATOR}/"${SHARD}/0", which the state store does not hold`,
    );
  });

  it('round-trips times and namespaces exactly: relative when all are safe integers, as they are otherwise', async () => {
    const cases: Array<{ time: number; namespace: string | number }[]> = [
      [
        { time: 1_700_000_000_000, namespace: 'session' },
        { time: 1_700_000_059_999, namespace: 1_700_000_000_000 },
        { time: -5, namespace: -7 },
      ],
      [
        { time: MAX_WATERMARK, namespace: 1.5 },
        { time: 10, namespace: 0 },
      ],
    ];
    for (const timers of cases) {
      const p = pipeline('exact');
      p.source<Ev>({ deserializer: passthroughDeserializer() })
        .withTimestamps((e) => e.ts, boundedOutOfOrderness(0))
        .keyBy((e) => e.key)
        .process({
          processElement(_e, ctx) {
            for (const t of timers) ctx.timers.registerEventTimeTimer(t.time, t.namespace);
          },
        })
        .sink('out');
      const h = await harness(compile(p), { tailOps: 1 });
      // The element at -1,000 puts the watermark at -1,001: every timer is pending.
      const r = await h.send([{ key: 'k', ts: -1_000 }]);
      expect(chunkWrites(r.mutations)).toHaveLength(1);
      const pending = (await withInlineTimers(r.checkpoint, h.backend)).timers;
      expect(pending.map((t) => [t.time, t.namespace]).sort()).toEqual(
        timers.map((t) => [t.time, t.namespace]).sort(),
      );
    }
  });

  it('a timer added and deleted within one commit writes no op; a failed record undoes that too', async () => {
    interface Cmd extends Ev {
      readonly op: 'add' | 'delete';
      readonly at: number;
      readonly fail?: boolean;
    }
    const p = pipeline('cancel');
    p.source<Cmd>({ deserializer: passthroughDeserializer() })
      .withTimestamps((e) => e.ts, boundedOutOfOrderness(0))
      .keyBy((e) => e.key)
      .process<string>({
        processElement(e, ctx) {
          if (e.op === 'add') ctx.timers.registerEventTimeTimer(e.at);
          else ctx.timers.deleteEventTimeTimer(e.at);
          if (e.fail) throw new Error('poison');
        },
        onTimer(timer, ctx) {
          ctx.emit(`${String(ctx.key)}@${timer.time}`);
        },
      })
      .sink('out');
    const h = await harness(compile(p), { tailOps: 1_000 });
    const cmd = (op: 'add' | 'delete', at: number, fail = false): Cmd => ({ key: 'k', ts: 1, op, at, fail });
    const r = await h.send([
      cmd('add', 100),
      cmd('delete', 100), // cancels the add: nothing to write
      cmd('add', 200),
      cmd('delete', 200, true), // rolled back (dead letter): the add of 200 stands
      cmd('add', 300),
      cmd('add', 300), // already there: no op
    ] as unknown as Ev[]);
    expect(r.outputs.map((o) => o.sink)).toEqual(['floe.dead-letter']);
    expect(r.checkpoint.timerLog?.tail.map((o) => [o.add, o.timer.time])).toEqual([
      [true, 200],
      [true, 300],
    ]);
    h.restart();
    await h.watermark(MAX_WATERMARK);
    expect(h.outputs.slice(1)).toEqual(['k@200', 'k@300']);
  });

  it('rejects timer log limits that are not whole numbers >= 1', () => {
    expect(() => new ShardTask(tumblingCounts(), SHARD, { tailOps: 0 })).toThrow(ConfigurationError);
    expect(() => new ShardTask(tumblingCounts(), SHARD, { tailOps: 0 })).toThrow(
      'timer log option tailOps must be a whole number >= 1; received 0',
    );
    expect(() => new ShardTask(tumblingCounts(), SHARD, { tailOps: 1.5 })).toThrow(/tailOps/);
  });
});
