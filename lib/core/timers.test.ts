/** TimerQueue ordering and bookkeeping, and the per-record undo Journal. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Journal } from './journal.ts';
import { compareScalars, compareTimers, QueuedTimer, StringKeyOrder, TimerQueue } from './timers.ts';

const t = (
  operator: number,
  time: number,
  key: string | number,
  namespace: string | number = '',
): QueuedTimer => new QueuedTimer(operator, time, key, namespace);

/** Fires the timers of the earliest time if it is <= limit; returns them (as pending copies). */
function popDue(queue: TimerQueue, limit: number): QueuedTimer[] | undefined {
  const time = queue.peekTime();
  if (time === Number.POSITIVE_INFINITY || time > limit) return undefined;
  const fired: QueuedTimer[] = [];
  queue.fireDue(time, (x) => fired.push(t(x.operator, x.time, x.key, x.namespace)));
  return fired;
}

/** Drains the queue up to `limit`, returning the timers of each time. */
function drain(queue: TimerQueue, limit: number): QueuedTimer[][] {
  const batches: QueuedTimer[][] = [];
  for (;;) {
    const due = popDue(queue, limit);
    if (due === undefined) return batches;
    batches.push(due);
  }
}

describe('compareScalars', () => {
  it('orders numbers before strings, each naturally', () => {
    const values: Array<string | number> = ['b', 10, 'a', -1, '10', 2, '', 'B', 1.5];
    expect([...values].sort(compareScalars)).toEqual([-1, 1.5, 2, 10, '', '10', 'B', 'a', 'b']);
    expect(compareScalars(1, '1')).toBeLessThan(0);
    expect(compareScalars('1', 1)).toBeGreaterThan(0);
    expect(compareScalars('x', 'x')).toBe(0);
    expect(compareScalars(3, 3)).toBe(0);
  });
});

describe('compareTimers', () => {
  it('orders by time, then key, then namespace, then operator', () => {
    const timers = [
      t(1, 100, 'a', 'x'),
      t(0, 100, 'a', 'x'),
      t(0, 100, 'a', 5),
      t(0, 100, 'b', ''),
      t(0, 100, 7, 'z'),
      t(2, 50, 'z', 'z'),
      t(0, 100, 'a', ''),
    ];
    expect([...timers].sort(compareTimers)).toEqual([
      t(2, 50, 'z', 'z'),
      t(0, 100, 7, 'z'),
      t(0, 100, 'a', 5),
      t(0, 100, 'a', ''),
      t(0, 100, 'a', 'x'),
      t(1, 100, 'a', 'x'),
      t(0, 100, 'b', ''),
    ]);
  });
});

describe('TimerQueue', () => {
  it('pops the earliest time first, each batch sorted by (key, namespace, operator)', () => {
    const q = new TimerQueue();
    q.add(0, 300, 'a', '');
    q.add(1, 100, 'b', '');
    q.add(0, 100, 'b', '');
    q.add(0, 100, 2, 'n');
    q.add(0, 100, 'a', 'y');
    q.add(0, 100, 'a', 1);
    q.add(0, 200, 'c', '');
    q.add(0, -50, 'neg', '');
    expect(q.size).toBe(8);
    expect(q.peekTime()).toBe(-50);
    expect(drain(q, 250)).toEqual([
      [t(0, -50, 'neg')],
      [t(0, 100, 2, 'n'), t(0, 100, 'a', 1), t(0, 100, 'a', 'y'), t(0, 100, 'b'), t(1, 100, 'b')],
      [t(0, 200, 'c')],
    ]);
    expect(q.size).toBe(1);
    expect(q.peekTime()).toBe(300);
    expect(q.all()).toEqual([t(0, 300, 'a')]);
  });

  it('fireDue fires nothing when nothing is due; popDue returns undefined when nothing is due, and includes the limit itself', () => {
    const q = new TimerQueue();
    expect(popDue(q, Number.POSITIVE_INFINITY)).toBeUndefined();
    expect(q.peekTime()).toBe(Number.POSITIVE_INFINITY);
    q.add(0, 10, 'k', '');
    expect(popDue(q, 9)).toBeUndefined();
    expect(q.size).toBe(1);
    expect(popDue(q, 10)).toEqual([t(0, 10, 'k')]);
    expect(q.size).toBe(0);
    expect(popDue(q, 10)).toBeUndefined();
  });

  it('adds idempotently per (operator, time, key, namespace), distinguishing 1 from "1"', () => {
    const q = new TimerQueue();
    expect(q.add(0, 10, 'k', '')).toBe(true);
    expect(q.add(0, 10, 'k', '')).toBe(false);
    expect(q.add(1, 10, 'k', '')).toBe(true);
    expect(q.add(0, 10, 'k', 'n')).toBe(true);
    expect(q.add(0, 11, 'k', '')).toBe(true);
    expect(q.add(0, 10, 1, '')).toBe(true);
    expect(q.add(0, 10, '1', '')).toBe(true);
    expect(q.add(0, 10, 'k', 1)).toBe(true);
    expect(q.add(0, 10, 'k', '1')).toBe(true);
    expect(q.add(0, 10, '1', '')).toBe(false);
    expect(q.size).toBe(8);
    expect(q.has(0, 10, 1, '')).toBe(true);
    expect(q.has(0, 10, 2, '')).toBe(false);
    expect(q.all()).toEqual([
      t(0, 10, 1),
      t(0, 10, '1'),
      t(0, 10, 'k', 1),
      t(0, 10, 'k'),
      t(1, 10, 'k'),
      t(0, 10, 'k', '1'),
      t(0, 10, 'k', 'n'),
      t(0, 11, 'k'),
    ]);
  });

  it('deletes timers; deleting a missing timer returns false', () => {
    const q = new TimerQueue();
    q.add(0, 10, 'a', '');
    q.add(0, 10, 'b', '');
    q.add(0, 20, 'a', '');
    expect(q.delete(0, 10, 'a', '')).toBe(true);
    expect(q.delete(0, 10, 'a', '')).toBe(false);
    expect(q.delete(0, 30, 'a', '')).toBe(false);
    expect(q.delete(1, 10, 'b', '')).toBe(false);
    expect(q.size).toBe(2);
    expect(q.has(0, 10, 'a', '')).toBe(false);
    expect(drain(q, 100)).toEqual([[t(0, 10, 'b')], [t(0, 20, 'a')]]);
  });

  it('skips a time whose timers were all deleted, and accepts the time again afterwards', () => {
    const q = new TimerQueue();
    q.add(0, 10, 'a', '');
    q.add(0, 20, 'b', '');
    q.delete(0, 10, 'a', '');
    expect(q.peekTime()).toBe(20);
    q.add(0, 10, 'c', '');
    expect(q.peekTime()).toBe(10);
    q.delete(0, 10, 'c', '');
    q.add(0, 10, 'd', '');
    expect(drain(q, 100)).toEqual([[t(0, 10, 'd')], [t(0, 20, 'b')]]);
    expect(q.size).toBe(0);
  });

  it('a time re-added after its batch was popped is popped again (timers set while firing)', () => {
    const q = new TimerQueue();
    q.add(0, 10, 'a', '');
    q.add(0, 30, 'a', '');
    expect(popDue(q, 100)).toEqual([t(0, 10, 'a')]);
    q.add(0, 10, 'a', 'again');
    q.add(0, 5, 'a', '');
    expect(drain(q, 100)).toEqual([[t(0, 5, 'a')], [t(0, 10, 'a', 'again')], [t(0, 30, 'a')]]);
  });

  it('keeps the heap ordered under many random operations', () => {
    const q = new TimerQueue();
    const model = new Map<string, QueuedTimer>();
    let seed = 12345;
    const rand = (n: number): number => {
      seed = (seed * 1103515245 + 12345) % 2147483648;
      return seed % n;
    };
    for (let i = 0; i < 2_000; i++) {
      const timer = t(
        rand(2),
        rand(60) - 10,
        rand(2) === 0 ? rand(5) : `k${rand(5)}`,
        rand(3) === 0 ? 1 : '',
      );
      const id = JSON.stringify(timer);
      if (rand(3) === 0) {
        expect(q.delete(timer.operator, timer.time, timer.key, timer.namespace)).toBe(model.delete(id));
      } else {
        expect(q.add(timer.operator, timer.time, timer.key, timer.namespace)).toBe(!model.has(id));
        model.set(id, timer);
      }
      if (rand(50) === 0) {
        const limit = rand(60) - 10;
        const due: string[] = [];
        q.forEachDue(limit, (timer) => due.push(JSON.stringify(timer)));
        const expected = [...model].filter(([, m]) => m.time <= limit).map(([id]) => id);
        expect(due.sort()).toEqual(expected.sort());
        for (const batch of drain(q, limit)) {
          for (const popped of batch) model.delete(JSON.stringify(popped));
        }
        expect([...model.values()].every((m) => m.time > limit)).toBe(true);
      }
      expect(q.size).toBe(model.size);
    }
    const rest = drain(q, Number.POSITIVE_INFINITY).flat();
    expect(rest).toEqual([...model.values()].sort(compareTimers));
  });

  it('forEachDue visits every timer up to the limit', () => {
    const q = new TimerQueue();
    q.add(0, 10, 'a', '');
    q.add(0, 20, 'b', '');
    q.add(1, 20, 'c', '');
    q.add(0, 30, 'd', '');
    const seen: QueuedTimer[] = [];
    q.forEachDue(20, (timer) => seen.push(timer));
    expect(seen.sort(compareTimers)).toEqual([t(0, 10, 'a'), t(0, 20, 'b'), t(1, 20, 'c')]);
    expect(q.size).toBe(4);
  });

  it('exports timer specs with operator uids, by bucket (time) in creation order, keys grouped', () => {
    const q = new TimerQueue();
    q.add(1, 20, 'k', 5);
    q.add(0, 20, 'j', 5);
    q.add(0, 20, 'k', 5);
    q.add(0, 10, 'z', '');
    const uids = ['window-0', 'process-0'];
    expect(q.toSpecs('event', uids)).toEqual([
      { operator: 'process-0', domain: 'event', time: 20, key: 'k', namespace: 5 },
      { operator: 'window-0', domain: 'event', time: 20, key: 'k', namespace: 5 },
      { operator: 'window-0', domain: 'event', time: 20, key: 'j', namespace: 5 },
      { operator: 'window-0', domain: 'event', time: 10, key: 'z', namespace: '' },
    ]);
    // The cached specs follow later changes.
    q.add(0, 20, 'a', '');
    q.delete(0, 20, 'j', 5);
    expect(q.toSpecs('event', uids).map((t) => [t.time, t.key, t.operator])).toEqual([
      [20, 'k', 'process-0'],
      [20, 'k', 'window-0'],
      [20, 'a', 'window-0'],
      [10, 'z', 'window-0'],
    ]);
    // Firing order is sorted whatever the registration order.
    expect(popDue(q, 10)).toEqual([t(0, 10, 'z')]);
    expect(popDue(q, 20)?.map((x) => [x.key, x.operator])).toEqual([
      ['a', 0],
      ['k', 0],
      ['k', 1],
    ]);
  });

  it('fires one-timer-per-key buckets in key order (strings, numbers, mixed)', () => {
    const q = new TimerQueue();
    for (const k of ['b', 'a10', 'a9', 'C']) q.add(0, 1, k, '');
    for (const k of [10, 9, -1, 100]) q.add(0, 2, k, '');
    for (const k of ['x', 3, 'a', 1]) q.add(0, 3, k, '');
    // A key with two timers, then one again: its slot is a single timer once more.
    q.add(0, 4, 'b', 1);
    q.add(0, 4, 'b', 2);
    q.add(0, 4, 'a', 1);
    q.delete(0, 4, 'b', 1);
    expect(popDue(q, 4)?.map((x) => x.key)).toEqual(['C', 'a10', 'a9', 'b']);
    expect(popDue(q, 4)?.map((x) => x.key)).toEqual([-1, 9, 10, 100]);
    expect(popDue(q, 4)?.map((x) => x.key)).toEqual([1, 3, 'a', 'x']);
    expect(popDue(q, 4)?.map((x) => [x.key, x.namespace])).toEqual([
      ['a', 1],
      ['b', 2],
    ]);
  });

  it('restores the same checkpoint order from its own specs', () => {
    const q = new TimerQueue();
    q.add(0, 20, 'k', 1);
    q.add(0, 20, 'j', 1);
    q.add(0, 20, 'k', 2);
    const uids = ['w'];
    const specs = q.toSpecs('event', uids);
    const restored = new TimerQueue();
    for (const s of specs) restored.add(0, s.time, s.key, s.namespace);
    expect(restored.toSpecs('event', uids)).toEqual(specs);
  });
});

describe('TimerQueue.fireDue while timers change the queue', () => {
  type Spec = readonly [operator: number, time: number, key: string | number, namespace: string];
  const id = (x: QueuedTimer): string => JSON.stringify([x.operator, x.time, x.key, x.namespace]);

  /** The specification: take the least due timer, fire it, repeat (Flink's InternalTimerServiceImpl). */
  class OneByOne {
    readonly pending = new Map<string, QueuedTimer>();
    add(o: number, time: number, key: string | number, ns: string | number): boolean {
      const timer = t(o, time, key, ns);
      if (this.pending.has(id(timer))) return false;
      this.pending.set(id(timer), timer);
      return true;
    }
    delete(o: number, time: number, key: string | number, ns: string | number): boolean {
      return this.pending.delete(id(t(o, time, key, ns)));
    }
    fireDue(limit: number, fire: (timer: QueuedTimer) => void): void {
      for (;;) {
        let least: QueuedTimer | undefined;
        for (const x of this.pending.values()) {
          if (x.time <= limit && (least === undefined || compareTimers(x, least) < 0)) least = x;
        }
        if (least === undefined) return;
        this.pending.delete(id(least));
        fire(least);
      }
    }
  }

  const spec: fc.Arbitrary<Spec> = fc.tuple(
    fc.integer({ min: 0, max: 1 }),
    fc.integer({ min: 0, max: 12 }),
    fc.constantFrom<string | number>('a', 'b', 'c', 1, 2),
    fc.constantFrom('', 'x'),
  );

  it('fires exactly as taking the least due timer one at a time, whatever the timers register or delete', () => {
    fc.assert(
      fc.property(
        fc.array(spec, { maxLength: 40 }),
        // Actions run by the n-th timer to fire: register or delete a timer (of any time).
        fc.array(fc.tuple(fc.nat(30), fc.boolean(), spec), { maxLength: 30 }),
        fc.integer({ min: 0, max: 14 }),
        (initial, actions, limit) => {
          const run = (queue: Pick<TimerQueue, 'add' | 'delete' | 'fireDue'>): string[] => {
            for (const [o, time, key, ns] of initial) queue.add(o, time, key, ns);
            const fired: string[] = [];
            queue.fireDue(limit, (timer) => {
              const n = fired.length;
              fired.push(id(timer));
              for (const [when, add, [o, time, key, ns]] of actions) {
                if (when !== n) continue;
                if (add) queue.add(o, time, key, ns);
                else queue.delete(o, time, key, ns);
              }
            });
            return fired;
          };
          const model = new OneByOne();
          const expected = run(model);
          const q = new TimerQueue();
          expect(run(q)).toEqual(expected);
          expect(q.all().map(id)).toEqual([...model.pending.values()].sort(compareTimers).map(id));
          expect(q.size).toBe(model.pending.size);
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('StringKeyOrder', () => {
  const bucket = (keys: readonly string[]) => new Map(keys.map((k) => [k, t(0, 1, k)] as const));

  it('orders each bucket as sort() orders its keys, whatever earlier buckets held', () => {
    // Buckets drawn from a small pool overlap (the remembered order is reused and extended);
    // from a large one they mostly do not (it is rebuilt). Keys include ones sort() and a
    // locale-aware order would disagree on (case, digits, non-ASCII).
    const key = fc.oneof(
      fc.constantFrom('a', 'B', 'a10', 'a9', 'é', 'Z', '', 'user-1', 'user-10', 'user-2'),
      fc.string({ maxLength: 4 }),
    );
    // Small buckets are sorted alone; large ones (>= minBucket) go through the remembered list.
    const bucketKeys = fc.oneof(
      fc.uniqueArray(key, { maxLength: 20 }),
      fc.uniqueArray(key, { minLength: StringKeyOrder.minBucket, maxLength: 150 }),
    );
    fc.assert(
      fc.property(fc.array(bucketKeys, { maxLength: 12 }), (buckets) => {
        const order = new StringKeyOrder();
        for (const keys of buckets) {
          const sorted = order.sort(bucket(keys)).map((x) => x.key);
          expect(sorted).toEqual([...keys].sort());
        }
      }),
      { numRuns: 300 },
    );
  });

  it('sorts small buckets alone, and forgets keys once it remembers mostly keys the buckets no longer hold', () => {
    const order = new StringKeyOrder();
    const remembered = () => (order as unknown as { keys: string[] }).keys;
    const keys = (prefix: string, n: number) => Array.from({ length: n }, (_, i) => `${prefix}-${i}`);
    order.sort(bucket(keys('old', 3_000)));
    expect(remembered()).toHaveLength(3_000);
    // Below minBucket: sorted alone, the list stays.
    expect(order.sort(bucket(['old-7', 'new', 'old-10'])).map((x) => x.key)).toEqual([
      'new',
      'old-10',
      'old-7',
    ]);
    expect(remembered()).toHaveLength(3_000);
    // A larger bucket of new keys: the list would hold mostly keys it lacks, so it starts again.
    const fresh = keys('new', StringKeyOrder.minBucket);
    expect(order.sort(bucket(fresh)).map((x) => x.key)).toEqual([...fresh].sort());
    expect(remembered()).toEqual([...fresh].sort());
  });
});

describe('Journal', () => {
  it('rolls back closures and map changes in reverse order of recording', () => {
    const journal = new Journal();
    const log: string[] = [];
    const map = new Map<unknown, unknown>([
      ['kept', 1],
      ['changed', 'old'],
    ]);
    journal.record(() => log.push('undo first'));
    journal.recordMap(map, 'changed');
    map.set('changed', 'new');
    journal.record(() => log.push(`undo second sees changed=${String(map.get('changed'))}`));
    journal.recordMap(map, 'added');
    map.set('added', true);
    journal.recordMap(map, 'kept');
    map.delete('kept');
    journal.record(() => log.push(`undo third sees kept=${String(map.has('kept'))}`));

    journal.rollback();
    expect(log).toEqual(['undo third sees kept=false', 'undo second sees changed=new', 'undo first']);
    expect([...map]).toEqual([
      ['changed', 'old'],
      ['kept', 1],
    ]);
  });

  it('restores the value before the first change when a key changes several times', () => {
    const journal = new Journal();
    const map = new Map<unknown, unknown>();
    journal.recordMap(map, 'k');
    map.set('k', 1);
    journal.recordMap(map, 'k');
    map.set('k', 2);
    journal.recordMap(map, 'k');
    map.delete('k');
    journal.recordMap(map, 'k');
    map.set('k', 3);
    journal.rollback();
    expect(map.has('k')).toBe(false);

    const existing = new Map<unknown, unknown>([['k', undefined]]);
    journal.recordMap(existing, 'k');
    existing.set('k', 'v');
    journal.rollback();
    expect(existing.has('k')).toBe(true);
    expect(existing.get('k')).toBeUndefined();
  });

  it('reset forgets the undo log; rollback empties it', () => {
    const journal = new Journal();
    const log: number[] = [];
    journal.record(() => log.push(1));
    journal.reset();
    journal.record(() => log.push(2));
    journal.rollback();
    journal.rollback();
    expect(log).toEqual([2]);
  });

  it('records nothing while disabled', () => {
    const journal = new Journal();
    const map = new Map<unknown, unknown>();
    const log: number[] = [];
    journal.enabled = false;
    journal.record(() => log.push(1));
    journal.recordMap(map, 'k');
    map.set('k', 1);
    journal.enabled = true;
    journal.record(() => log.push(2));
    journal.rollback();
    expect(log).toEqual([2]);
    expect(map.get('k')).toBe(1);
  });
});
