/**
 * A state store with an item size limit (StateStore.maxEntryBytes; DynamoDB's 400 KB): a commit
 * whose state entry is larger fails with a StateSerializationError, and the same batch processed
 * again in the checked pass (what the shard worker does next) dead-letters exactly the
 * records, or timers, that would grow an entry past the limit. The shard moves on instead of
 * failing the same commit forever.
 */
import { describe, expect, it } from 'vitest';
import { collect } from './aggregates.ts';
import { compile, type PipelinePlan } from './compile.ts';
import { DEAD_LETTER_SINK, pipeline } from './dsl.ts';
import { StateSerializationError } from './errors.ts';
import { MemoryBackend } from './memory-backend.ts';
import type { Output, SourceRecord } from './ports.ts';
import { type DeadLetter, ShardTask } from './shard-task.ts';
import { listState } from './state.ts';
import { boundedOutOfOrderness } from './watermarks.ts';
import { tumbling } from './windows.ts';

interface Note {
  readonly user: string;
  readonly ts: number;
  /** 'clear' empties the user's notes; 'remind' sets a timer that adds a note when it fires. */
  readonly text: string;
}

const SHARD = 'shardId-000000000000';
const LIMIT = 800;
const NOTE = 'x'.repeat(100);

function records(notes: readonly Note[]): SourceRecord[] {
  return notes.map((n, i) => ({
    data: n,
    partitionKey: n.user,
    sequenceNumber: String(i + 1),
    arrivalTime: 1_000 + i,
  }));
}

/**
 * Commits batch by batch. After a commit that fails with a StateSerializationError it processes
 * that batch again from the last commit, checking every record, and keeps checking, as the
 * worker does for the rest of its invocation.
 */
async function runAsWorker(
  plan: PipelinePlan,
  backend: MemoryBackend,
  batches: readonly (readonly SourceRecord[])[],
): Promise<{ outputs: Output[]; failures: unknown[] }> {
  const lease = await backend.acquireLease(SHARD, 'w', 0, 1e9);
  const outputs: Output[] = [];
  const failures: unknown[] = [];
  let task = new ShardTask(plan, SHARD);
  for (const batch of batches) {
    const result = await task.processBatch(batch, backend, 0);
    const failure = await backend.commit(lease, result).then(
      () => undefined,
      (error: unknown) => error,
    );
    if (failure === undefined) {
      outputs.push(...result.outputs);
      continue;
    }
    failures.push(failure);
    task = new ShardTask(plan, (await backend.readCheckpoint(SHARD)) ?? SHARD, { checked: true });
    const checked = await task.processBatch(batch, backend, 0);
    await backend.commit(lease, checked);
    outputs.push(...checked.outputs);
  }
  return { outputs, failures };
}

const letters = (outputs: readonly Output[]): DeadLetter[] =>
  outputs.filter((o) => o.sink === DEAD_LETTER_SINK).map((o) => o.value as DeadLetter);

function expectEntriesWithin(backend: MemoryBackend, limit: number): void {
  for (const [address, value] of backend.entries()) {
    expect(Buffer.byteLength(address) + Buffer.byteLength(value)).toBeLessThanOrEqual(limit);
  }
}

describe('state entries larger than the store holds', () => {
  function notesPlan(): PipelinePlan {
    const p = pipeline('notes');
    p.source<Note>({ deserializer: (data) => data as Note })
      .withTimestamps((n) => n.ts, boundedOutOfOrderness(0))
      .keyBy((n) => n.user)
      .process<{ user: string; notes: number }, { notes: ReturnType<typeof listState<string>> }>({
        state: { notes: listState<string>() },
        processElement(n, ctx) {
          if (n.text === 'clear') ctx.state.notes.clear();
          else if (n.text === 'remind') ctx.timers.registerEventTimeTimer(n.ts + 5);
          else ctx.state.notes.add(n.text);
          ctx.emit({ user: n.user, notes: ctx.state.notes.get().length });
        },
        onTimer(_timer, ctx) {
          ctx.state.notes.add(NOTE);
        },
      })
      .sink('out');
    return compile(p);
  }

  it('dead-letters the records that would grow a key past the limit; other keys and later records are exact', async () => {
    const notes: Note[] = [];
    for (let i = 0; i < 12; i++)
      notes.push({ user: 'a', ts: i, text: NOTE }, { user: 'b', ts: i, text: 'short' });
    notes.push({ user: 'a', ts: 20, text: 'clear' }, { user: 'a', ts: 21, text: NOTE });
    const backend = new MemoryBackend({ maxEntryBytes: LIMIT });
    // The first commit ends with a's notes over the limit; the second clears them.
    const all = records(notes);
    const { outputs, failures } = await runAsWorker(notesPlan(), backend, [all.slice(0, 24), all.slice(24)]);

    expect(failures).toEqual([expect.any(StateSerializationError)]);
    expect((failures[0] as Error).message).toMatch(
      /^state entry process-0\/"a" is \d+ bytes; this store holds at most 800/,
    );
    const dead = letters(outputs);
    expect(dead.length).toBeGreaterThan(0);
    for (const letter of dead) {
      expect(letter).toMatchObject({ reason: 'state-size', partitionKey: 'a', shardId: SHARD });
      expect(letter.message).toMatch(
        /the state of key "a" in operator "process-0" would take \d+ bytes, over the 800/,
      );
    }
    // The accepted notes of a are a prefix: once full, every further note is refused until the clear.
    const aCounts = outputs
      .filter((o) => o.sink === 'out')
      .map((o) => o.value as { user: string; notes: number });
    const a = aCounts.filter((c) => c.user === 'a').map((c) => c.notes);
    const kept = 12 - dead.length;
    expect(a).toEqual([...Array.from({ length: kept }, (_, i) => i + 1), 0, 1]);
    expect(aCounts.filter((c) => c.user === 'b').map((c) => c.notes)).toEqual(
      Array.from({ length: 12 }, (_, i) => i + 1),
    );
    // The dead-lettered records are the ones after the key filled up, in order.
    expect(dead.map((l) => l.sequenceNumber)).toEqual(
      notes
        .map((n, i) => ({ n, seq: String(i + 1) }))
        .filter(({ n }) => n.user === 'a' && n.text === NOTE)
        .slice(kept, 12)
        .map(({ seq }) => seq),
    );
    expectEntriesWithin(backend, LIMIT);
    expect((await backend.readCheckpoint(SHARD))?.position).toBe(String(notes.length));
  });

  it('a timer that would grow its key past the limit is dead-lettered with reason "timer"; its record stands', async () => {
    const notes: Note[] = [];
    for (let i = 0; i < 7; i++) notes.push({ user: 'a', ts: i, text: NOTE });
    notes.push({ user: 'a', ts: 7, text: 'remind' }, { user: 'z', ts: 100, text: 'short' });
    const backend = new MemoryBackend({ maxEntryBytes: LIMIT });
    const { outputs, failures } = await runAsWorker(notesPlan(), backend, [records(notes)]);

    // Seven notes fit; the timer's eighth does not.
    expect(failures).toEqual([expect.any(StateSerializationError)]);
    const dead = letters(outputs);
    expect(dead).toEqual([
      expect.objectContaining({
        reason: 'timer',
        key: 'a',
        time: 12,
        message: expect.stringMatching(/the state of key "a" in operator "process-0" would take \d+ bytes/),
      }),
    ]);
    expect(outputs.filter((o) => o.sink === 'out').map((o) => o.value)).toContainEqual({
      user: 'a',
      notes: 7,
    });
    expectEntriesWithin(backend, LIMIT);
  });

  it('a window collecting too much keeps the elements that fit, fires them, and accepts the next window', async () => {
    const p = pipeline('windows');
    p.source<Note>({ deserializer: (data) => data as Note })
      .withTimestamps((n) => n.ts, boundedOutOfOrderness(0))
      .keyBy((n) => n.user)
      .window(tumbling({ size: 100 }))
      .aggregate(collect<Note>(), ({ key, window, result }) => ({
        key,
        start: window.start,
        n: result.length,
      }))
      .sink('out');
    const notes: Note[] = [];
    for (let i = 0; i < 10; i++) notes.push({ user: 'a', ts: i, text: 'y'.repeat(60) });
    // The key's state holds all its windows: a's next element fits once its full window is gone,
    // after b's element moved the watermark past it (a refused element moves no watermark).
    notes.push(
      { user: 'b', ts: 120, text: 'b' },
      { user: 'a', ts: 150, text: 'y'.repeat(60) },
      { user: 'b', ts: 300, text: 'end' },
    );
    const backend = new MemoryBackend({ maxEntryBytes: LIMIT });
    const all = records(notes);
    const { outputs, failures } = await runAsWorker(compile(p), backend, [all.slice(0, 10), all.slice(10)]);

    expect(failures).toEqual([expect.any(StateSerializationError)]);
    const dead = letters(outputs);
    expect(dead.length).toBeGreaterThan(0);
    expect(dead.every((l) => l.reason === 'state-size')).toBe(true);
    expect(outputs.filter((o) => o.sink === 'out').map((o) => o.value)).toEqual([
      { key: 'a', start: 0, n: 10 - dead.length },
      { key: 'a', start: 100, n: 1 },
      { key: 'b', start: 100, n: 1 },
    ]);
    expectEntriesWithin(backend, LIMIT);
  });

  it('a store without a limit stores large entries; a bad limit is refused', async () => {
    const notes = Array.from({ length: 12 }, (_, i): Note => ({ user: 'a', ts: i, text: NOTE }));
    const { outputs, failures } = await runAsWorker(notesPlan(), new MemoryBackend(), [records(notes)]);
    expect(failures).toEqual([]);
    expect(letters(outputs)).toEqual([]);
    expect(() => new MemoryBackend({ maxEntryBytes: 0 })).toThrow(
      /maxEntryBytes must be a whole number >= 1; received 0/,
    );
  });
});
