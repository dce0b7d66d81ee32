import { TransactionCanceledException } from '@aws-sdk/client-dynamodb';
import { describe, expect, it } from 'vitest';
import { cancellationOf, planChunks, writeChunk } from './transact-chunks.ts';

const cancelled = (codes: readonly string[]): TransactionCanceledException =>
  new TransactionCanceledException({
    message: `Transaction cancelled [${codes.join(', ')}]`,
    $metadata: { httpStatusCode: 400 },
    CancellationReasons: codes.map((Code) => ({ Code })),
  });

const range = (n: number): number[] => Array.from({ length: n }, (_, i) => i);

describe('planChunks', () => {
  const one = () => 1;

  it('keeps every item, in order, within the action limit, balanced', () => {
    const chunks = planChunks(range(250), one, { maxActions: 100, maxBytes: 1e9 });
    expect(chunks.map((c) => c.length)).toEqual([84, 84, 82]);
    expect(chunks.flat()).toEqual(range(250));
  });

  it('makes at least minChunks chunks when there are enough items', () => {
    expect(
      planChunks(range(101), one, { maxActions: 100, maxBytes: 1e9, minChunks: 2 }).map((c) => c.length),
    ).toEqual([51, 50]);
    expect(
      planChunks(range(3), one, { maxActions: 100, maxBytes: 1e9, minChunks: 2 }).map((c) => c.length),
    ).toEqual([2, 1]);
    expect(planChunks(range(1), one, { maxActions: 100, maxBytes: 1e9, minChunks: 2 })).toEqual([[0]]);
    expect(planChunks([], one, { maxActions: 100, maxBytes: 1e9, minChunks: 2 })).toEqual([]);
  });

  it('closes a chunk before it would exceed the byte limit', () => {
    const sizes = [300, 300, 300, 900, 100, 100];
    const chunks = planChunks(range(sizes.length), (i) => sizes[i]!, { maxActions: 100, maxBytes: 1000 });
    expect(chunks).toEqual([[0, 1, 2], [3, 4], [5]]);
    for (const c of chunks) {
      if (c.length > 1) expect(c.reduce((n, i) => n + sizes[i]!, 0)).toBeLessThanOrEqual(1000);
    }
  });

  it('never exceeds maxActions whatever the sizes', () => {
    for (const n of [1, 99, 100, 101, 199, 200, 201, 1000, 1234]) {
      const chunks = planChunks(range(n), one, { maxActions: 100, maxBytes: 1e9, minChunks: 2 });
      expect(Math.max(...chunks.map((c) => c.length))).toBeLessThanOrEqual(100);
      expect(chunks.flat()).toEqual(range(n));
    }
  });
});

describe('cancellationOf', () => {
  it('names the items whose condition failed', () => {
    const c = cancellationOf(
      cancelled(['None', 'ConditionalCheckFailed', 'None', 'ConditionalCheckFailed']),
      4,
    );
    expect([...(c?.conditionFailed ?? [])]).toEqual([1, 3]);
    expect(c?.transient).toBe(false);
  });

  it('flags transient reasons', () => {
    const c = cancellationOf(cancelled(['TransactionConflict', 'None']), 2);
    expect(c?.transient).toBe(true);
    expect(c?.conditionFailed.size).toBe(0);
  });

  it('gives up on other reasons, missing or misaligned reasons and other errors', () => {
    expect(cancellationOf(cancelled(['ValidationError', 'None']), 2)).toBeUndefined();
    expect(cancellationOf(cancelled(['ConditionalCheckFailed']), 2)).toBeUndefined();
    expect(cancellationOf(cancelled(['None', 'None']), 2)).toBeUndefined();
    expect(
      cancellationOf(new TransactionCanceledException({ message: 'x', $metadata: {} }), 1),
    ).toBeUndefined();
    expect(cancellationOf(new Error('boom'), 1)).toBeUndefined();
  });
});

describe('writeChunk', () => {
  /** A fake transaction over a version map: an item is written unless the stored one is newer. */
  function fakeTable(stored: Map<number, number>) {
    const sent: number[][] = [];
    const send = async (items: readonly { key: number; version: number }[]) => {
      sent.push(items.map((i) => i.key));
      const codes = items.map((i) =>
        (stored.get(i.key) ?? -1) > i.version ? 'ConditionalCheckFailed' : 'None',
      );
      if (codes.some((c) => c !== 'None')) throw cancelled(codes);
      for (const i of items) stored.set(i.key, i.version);
    };
    return { sent, send };
  }

  it('sends a chunk once when every condition holds', async () => {
    const stored = new Map<number, number>();
    const table = fakeTable(stored);
    const outcome = await writeChunk(
      range(5).map((key) => ({ key, version: 1 })),
      table.send,
    );
    expect(outcome).toEqual({ requests: 1, itemsSent: 5, skipped: 0, skippedItems: [] });
    expect([...stored.keys()].sort()).toEqual(range(5));
  });

  it('sends a cancelled chunk again without exactly the items whose condition failed', async () => {
    const stored = new Map<number, number>([
      [1, 9],
      [3, 9],
    ]);
    const table = fakeTable(stored);
    const outcome = await writeChunk(
      range(5).map((key) => ({ key, version: 2 })),
      table.send,
    );
    expect(table.sent).toEqual([
      [0, 1, 2, 3, 4],
      [0, 2, 4],
    ]);
    expect(outcome).toEqual({
      requests: 2,
      itemsSent: 8,
      skipped: 2,
      skippedItems: [
        { key: 1, version: 2 },
        { key: 3, version: 2 },
      ],
    });
    expect([...stored.entries()].sort((a, b) => a[0] - b[0])).toEqual([
      [0, 2],
      [1, 9],
      [2, 2],
      [3, 9],
      [4, 2],
    ]);
  });

  it('stops when every item is newer', async () => {
    const stored = new Map<number, number>(range(3).map((k) => [k, 9]));
    const table = fakeTable(stored);
    const outcome = await writeChunk(
      range(3).map((key) => ({ key, version: 2 })),
      table.send,
    );
    expect(outcome).toMatchObject({ requests: 1, itemsSent: 3, skipped: 3 });
    expect(outcome.skippedItems.map((i) => i.key)).toEqual([0, 1, 2]);
    expect(table.sent).toHaveLength(1);
  });

  it('retries transient cancellations with backoff, then raises the last one', async () => {
    const waits: number[] = [];
    let calls = 0;
    const conflictTwice = async () => {
      if (++calls <= 2) throw cancelled(['None', 'TransactionConflict']);
    };
    const outcome = await writeChunk([1, 2], conflictTwice, {
      sleep: async (ms) => {
        waits.push(ms);
      },
      random: () => 0.999,
      baseDelayMs: 10,
    });
    expect(outcome).toEqual({ requests: 3, itemsSent: 6, skipped: 0, skippedItems: [] });
    expect(waits).toEqual([10, 20]);

    const always = async () => {
      throw cancelled(['TransactionConflict']);
    };
    await expect(
      writeChunk([1], always, { maxTransientRetries: 2, sleep: async () => {} }),
    ).rejects.toBeInstanceOf(TransactionCanceledException);
  });

  it('drops the failed items and retries when a cancellation mixes conditions and conflicts', async () => {
    const sent: number[][] = [];
    const send = async (items: readonly number[]) => {
      sent.push([...items]);
      if (sent.length === 1) throw cancelled(['ConditionalCheckFailed', 'TransactionConflict', 'None']);
    };
    const outcome = await writeChunk([7, 8, 9], send, { sleep: async () => {} });
    expect(sent).toEqual([
      [7, 8, 9],
      [8, 9],
    ]);
    expect(outcome.skipped).toBe(1);
  });

  it('rethrows other errors unchanged', async () => {
    const error = new Error('ValidationException');
    await expect(
      writeChunk([1], async () => {
        throw error;
      }),
    ).rejects.toBe(error);
    const other = cancelled(['ValidationError']);
    await expect(
      writeChunk([1], async () => {
        throw other;
      }),
    ).rejects.toBe(other);
  });
});
