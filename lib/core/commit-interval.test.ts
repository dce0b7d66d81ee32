/** Several batches in one commit (ShardTask.process + takeCommit): the commit interval. */
import { describe, expect, it } from 'vitest';
import { count } from './aggregates.ts';
import { compile } from './compile.ts';
import { pipeline } from './dsl.ts';
import { MemoryBackend } from './memory-backend.ts';
import type { Output, SourceRecord } from './ports.ts';
import { ShardTask } from './shard-task.ts';
import { boundedOutOfOrderness, withIdleness } from './watermarks.ts';
import { tumbling } from './windows.ts';

interface Ev {
  readonly user: string;
  readonly ts: number;
}

const SHARD = 'shard-0';

function plan() {
  const p = pipeline('interval');
  p.source<Ev>({ deserializer: (data) => data as Ev })
    .withTimestamps((e) => e.ts, boundedOutOfOrderness(5))
    .keyBy((e) => e.user)
    .window(tumbling({ size: 10 }))
    .aggregate(count())
    .sink('out');
  return compile(p);
}

/** 6 batches of 5 records; event time moves 1 ms per record over 3 users. */
function batches(): SourceRecord[][] {
  const out: SourceRecord[][] = [];
  let n = 0;
  for (let b = 0; b < 6; b++) {
    const batch: SourceRecord[] = [];
    for (let i = 0; i < 5; i++, n++) {
      batch.push({
        data: { user: `u${n % 3}`, ts: n },
        partitionKey: `u${n % 3}`,
        sequenceNumber: String(n + 1).padStart(3, '0'),
        arrivalTime: 1_000 + n,
      });
    }
    out.push(batch);
  }
  return out;
}

async function committed(backend: MemoryBackend): Promise<Output[]> {
  return backend.unpublishedOutputs(SHARD);
}

describe('commit interval (process + takeCommit)', () => {
  it('commits several batches as one, with the same outputs as a commit per batch', async () => {
    const p = plan();
    const perBatch = new MemoryBackend();
    const perBatchTask = new ShardTask(p, SHARD);
    let lease = await perBatch.acquireLease(SHARD, 'a', 0, 1e9);
    for (const batch of batches())
      await perBatch.commit(lease, await perBatchTask.processBatch(batch, perBatch, 0));

    const grouped = new MemoryBackend();
    const task = new ShardTask(p, SHARD);
    lease = await grouped.acquireLease(SHARD, 'a', 0, 1e9);
    const all = batches();
    for (const batch of all.slice(0, 3)) await task.process(batch, grouped, 0);
    expect(task.uncommittedRecords).toBe(15);
    const first = task.takeCommit();
    expect(task.uncommittedRecords).toBe(0);
    expect(first.changed).toBe(true);
    expect(first.stats.records).toBe(15);
    expect(first.checkpoint).toMatchObject({ commitNumber: 1, position: '015' });
    expect(first.outputs.map((o) => o.id)).toEqual(first.outputs.map((_, i) => `interval/${SHARD}/1/${i}`));
    await grouped.commit(lease, first);
    for (const batch of all.slice(3)) await task.process(batch, grouped, 0);
    await grouped.commit(lease, task.takeCommit());
    expect(task.takeCommit().changed).toBe(false);

    const values = (outputs: Output[]) => outputs.map((o) => o.value);
    expect(values(await committed(grouped))).toEqual(values(await committed(perBatch)));
    expect(values(await committed(grouped)).length).toBeGreaterThan(3);
    expect(await grouped.readCheckpoint(SHARD)).toMatchObject({ commitNumber: 2, position: '030' });
    expect(grouped.entries()).toEqual(perBatch.entries());
  });

  it('a crash before takeCommit loses nothing: the batches are processed again from the checkpoint', async () => {
    const p = plan();
    const all = batches();
    const reference = new MemoryBackend();
    {
      const task = new ShardTask(p, SHARD);
      const lease = await reference.acquireLease(SHARD, 'a', 0, 1e9);
      for (const batch of all.slice(0, 2)) await task.process(batch, reference, 0);
      await reference.commit(lease, task.takeCommit());
      for (const batch of all.slice(2)) await task.process(batch, reference, 0);
      await reference.commit(lease, task.takeCommit());
    }

    const backend = new MemoryBackend();
    let task = new ShardTask(p, SHARD);
    let lease = await backend.acquireLease(SHARD, 'a', 0, 1e9);
    for (const batch of all.slice(0, 2)) await task.process(batch, backend, 0);
    await backend.commit(lease, task.takeCommit());
    for (const batch of all.slice(2, 5)) await task.process(batch, backend, 0);
    // Crash: the pending commit is dropped with every in-memory object.
    const restored = MemoryBackend.deserialize(backend.serialize());
    task = new ShardTask(p, (await restored.readCheckpoint(SHARD))!);
    lease = await restored.acquireLease(SHARD, 'b', 2e9, 1e9); // after the crashed lease expired
    // The reader resumes after the checkpoint; a redelivered batch is skipped.
    for (const batch of all.slice(1)) await task.process(batch, restored, 0);
    const result = task.takeCommit();
    expect(result.stats).toMatchObject({ records: 20, duplicates: 5 });
    await restored.commit(lease, result);

    expect(await committed(restored)).toEqual(await committed(reference));
    expect(restored.entries()).toEqual(reference.entries());
  });
});

describe('mutations of keys born and gone within one commit', () => {
  const record = (user: string, ts: number, seq: number): SourceRecord => ({
    data: { user, ts },
    partitionKey: user,
    sequenceNumber: String(seq).padStart(3, '0'),
    arrivalTime: 1_000 + seq,
  });

  it('writes nothing for a key whose window opened and fired in the same commit, and deletes a stored one', async () => {
    const backend = new MemoryBackend();
    const task = new ShardTask(plan(), SHARD);
    const lease = await backend.acquireLease(SHARD, 'a', 0, 1e9);
    // Commit 1: a's window [0, 10) opens and fires (b at 100 moves the watermark to 94).
    const first = await task.processBatch(
      [record('a', 1, 1), record('a', 2, 2), record('b', 100, 3)],
      backend,
      0,
    );
    expect(first.outputs.map((o) => o.value)).toEqual([
      { key: 'a', window: { start: 0, end: 10 }, result: 2 },
    ]);
    expect(first.mutations.map((m) => [m.address, m.value === null ? 'delete' : 'put'])).toEqual([
      ['window-0/"b"', 'put'],
    ]);
    await backend.commit(lease, first);
    // Commit 2: b's window fires; b is stored, so it is deleted.
    const second = await task.processBatch([record('c', 200, 4)], backend, 0);
    expect(second.mutations.map((m) => [m.address, m.value === null ? 'delete' : 'put']).sort()).toEqual([
      ['window-0/"b"', 'delete'],
      ['window-0/"c"', 'put'],
    ]);
    await backend.commit(lease, second);
    expect([...backend.entries().keys()]).toEqual(['window-0/"c"']);
  });

  it('committedCheckpoint: the last commit while nothing is uncommitted, undefined in between', async () => {
    const p = pipeline('idle');
    p.source<Ev>({ deserializer: (data) => data as Ev })
      .withTimestamps((e) => e.ts, withIdleness(boundedOutOfOrderness(5), 1_000))
      .keyBy((e) => e.user)
      .window(tumbling({ size: 10 }))
      .aggregate(count())
      .sink('out');
    const backend = new MemoryBackend();
    const task = new ShardTask(compile(p), SHARD);
    expect(task.committedCheckpoint?.commitNumber).toBe(0);
    await task.process([record('a', 1, 1)], backend, 1_001);
    expect(task.committedCheckpoint, 'a processed record').toBeUndefined();
    const first = task.takeCommit();
    expect(task.committedCheckpoint).toBe(first.checkpoint);
    expect(task.cachedKeys).toBe(1);
    // A duplicate (redelivered) record is uncommitted progress too.
    await task.process([record('a', 1, 1)], backend, 1_001);
    expect(task.committedCheckpoint).toBeUndefined();
    const again = task.takeCommit();
    expect(again.changed).toBe(false);
    expect(task.committedCheckpoint).toBe(first.checkpoint);
    // Caught up and idle for 5 ms past the 1 s timeout: idleness moves the watermark from -5
    // to 0 without firing anything; a commit that skips idle watermarks leaves the task reusable.
    await task.process([], backend, 2_006);
    expect(task.watermark).toBe(0);
    expect(task.watermark).toBeGreaterThan(first.checkpoint.watermark);
    expect(task.takeCommit({ commitIdleWatermark: false }).changed).toBe(false);
    expect(task.committedCheckpoint).toBe(first.checkpoint);
    // A timer that fires is a change until committed.
    await task.process([record('b', 30, 2)], backend, 2_007);
    expect(task.committedCheckpoint).toBeUndefined();
    const fired = task.takeCommit();
    expect(fired.outputs.map((o) => o.value)).toEqual([
      { key: 'a', window: { start: 0, end: 10 }, result: 1 },
    ]);
    expect(task.committedCheckpoint).toBe(fired.checkpoint);
  });
});
