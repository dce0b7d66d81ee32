/** A timer queue ordered by (time, key, namespace, operator); registration is idempotent. */
import type { TimeDomain, TimerNamespace, TimerSpec } from './checkpoint.ts';
import type { Undoable } from './journal.ts';

/** A pending timer. Ordered by (time, key, namespace, operator). */
export class QueuedTimer {
  /** TimerLog bookkeeping: the index of the op that added this timer in the open commit; -1: none. */
  logAt = -1;
  /** Set once the timer has fired, or was deleted while its time was firing (TimerQueue.fireDue). */
  done = false;
  /**
   * The shard task's bookkeeping: the state slot of the timer's key in its operator when it was
   * registered (-1: unknown), valid while that operator's state has dropped no key since
   * (`slotEpoch`, KeyedStateBackend.dropEpoch). Firing it then needs no lookup of the key.
   */
  slot = -1;
  slotEpoch = 0;
  constructor(
    readonly operator: number,
    readonly time: number,
    readonly key: string | number,
    readonly namespace: TimerNamespace,
  ) {}
}

/** Orders numbers before strings, each naturally; gives a total, deterministic order. */
export function compareScalars(a: string | number, b: string | number): number {
  if (typeof a === 'number') {
    if (typeof b === 'number') return a - b;
    return -1;
  }
  if (typeof b === 'number') return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

export function compareTimers(a: QueuedTimer, b: QueuedTimer): number {
  return (
    a.time - b.time ||
    compareScalars(a.key, b.key) ||
    compareScalars(a.namespace, b.namespace) ||
    a.operator - b.operator
  );
}

type Slot = QueuedTimer | QueuedTimer[];

/** SameValueZero, as Map keys compare. */
const sameNamespace = (a: TimerNamespace, b: TimerNamespace): boolean =>
  a === b || (Number.isNaN(a) && Number.isNaN(b));

/** The timer of (operator, namespace) among one key's timers, if any. */
function timerIn(slot: Slot, operator: number, namespace: TimerNamespace): QueuedTimer | undefined {
  if (!Array.isArray(slot)) {
    return slot.operator === operator && sameNamespace(slot.namespace, namespace) ? slot : undefined;
  }
  for (const t of slot) if (t.operator === operator && sameNamespace(t.namespace, namespace)) return t;
  return undefined;
}

/**
 * The timers of one time, by key; a key with timers of several (operator, namespace) has an
 * array. A bucket of a single timer (common when timer times are spread out, as with session
 * windows) holds it in `one` and has no map. The bucket is sorted only when it fires: a
 * checkpoint lists its timers in bucket order, from a spec list kept up to date on insert.
 */
class Bucket {
  private byKey: Map<string | number, Slot> | undefined = undefined;
  private one: QueuedTimer | undefined = undefined;
  size = 0;
  /** Checkpoint specs in bucket order, for one domain and uid list (undefined: rebuild). */
  private specs: TimerSpec[] | undefined = undefined;
  private specsDomain: TimeDomain | undefined = undefined;
  private specsUids: readonly string[] | undefined = undefined;

  find(operator: number, key: string | number, namespace: TimerNamespace): QueuedTimer | undefined {
    const byKey = this.byKey;
    const slot = byKey === undefined ? (this.one?.key === key ? this.one : undefined) : byKey.get(key);
    return slot === undefined ? undefined : timerIn(slot, operator, namespace);
  }

  /**
   * Adds the timer (operator, time, key, namespace) unless the bucket has it; returns the new
   * timer, or undefined. One lookup of the key (the hot path of every window registration).
   */
  add(
    operator: number,
    time: number,
    key: string | number,
    namespace: TimerNamespace,
  ): QueuedTimer | undefined {
    let byKey = this.byKey;
    if (byKey === undefined) {
      const one = this.one;
      if (one === undefined) {
        const timer = new QueuedTimer(operator, time, key, namespace);
        this.one = timer;
        this.size++;
        this.specs?.push(spec(timer, this.specsDomain!, this.specsUids!));
        return timer;
      }
      if (one.key === key && timerIn(one, operator, namespace) !== undefined) return undefined;
      byKey = new Map([[one.key, one]]);
      this.byKey = byKey;
      this.one = undefined;
    }
    const slot = byKey.get(key);
    if (slot === undefined) {
      const timer = new QueuedTimer(operator, time, key, namespace);
      byKey.set(key, timer);
      this.size++;
      this.specs?.push(spec(timer, this.specsDomain!, this.specsUids!));
      return timer;
    }
    // A registration already there (idempotent) allocates nothing.
    if (timerIn(slot, operator, namespace) !== undefined) return undefined;
    const timer = new QueuedTimer(operator, time, key, namespace);
    if (Array.isArray(slot)) slot.push(timer);
    else byKey.set(key, [slot, timer]);
    this.size++;
    // The key's timers are listed together: the order changed, rebuild the specs when needed.
    this.specs = undefined;
    return timer;
  }

  /** Removes `timer`, which is in the bucket. */
  remove(timer: QueuedTimer): void {
    const byKey = this.byKey;
    if (byKey === undefined) {
      if (this.one === timer) this.one = undefined;
    } else {
      const slot = byKey.get(timer.key);
      if (slot === timer) byKey.delete(timer.key);
      else if (Array.isArray(slot)) {
        slot.splice(slot.indexOf(timer), 1);
        // An array slot always holds two or more timers (timers() relies on it).
        if (slot.length === 1) byKey.set(timer.key, slot[0]!);
        else if (slot.length === 0) byKey.delete(timer.key);
      }
    }
    this.size--;
    this.specs = undefined;
  }

  /** The timers, sorted by (key, namespace, operator); `order` ranks string keys. */
  timers(order: StringKeyOrder): QueuedTimer[] {
    const byKey = this.byKey;
    if (byKey !== undefined && byKey.size === this.size) {
      // One timer per key (array slots hold two or more), the window operators' case: ordering
      // the keys alone is enough.
      let strings = 0;
      byKey.forEach((_, k) => {
        if (typeof k === 'string') strings++;
      });
      if (strings === byKey.size) return order.sort(byKey as Map<string | number, QueuedTimer>);
      if (strings === 0) {
        // Sorting numbers without a comparator function is several times faster.
        const keys = [...byKey.keys()] as number[];
        keys.sort((a, b) => a - b);
        return keys.map((k) => byKey.get(k) as QueuedTimer);
      }
    }
    const out: QueuedTimer[] = [];
    this.forEach((t) => {
      out.push(t);
    });
    return out.sort(compareSameTime);
  }

  /** Checkpoint specs of the timers, in bucket order. */
  timerSpecs(domain: TimeDomain, operatorUids: readonly string[]): TimerSpec[] {
    if (this.specs === undefined || this.specsDomain !== domain || this.specsUids !== operatorUids) {
      const specs: TimerSpec[] = [];
      this.forEach((t) => {
        specs.push(spec(t, domain, operatorUids));
      });
      this.specs = specs;
      this.specsDomain = domain;
      this.specsUids = operatorUids;
    }
    return this.specs;
  }

  forEach(fn: (timer: QueuedTimer) => void): void {
    if (this.byKey === undefined) {
      if (this.one !== undefined) fn(this.one);
      return;
    }
    // Map.forEach: iterating entries allocates nothing, where for..of may allocate a result per entry.
    this.byKey.forEach((slot) => {
      if (Array.isArray(slot)) for (const t of slot) fn(t);
      else fn(slot);
    });
  }
}

function spec(t: QueuedTimer, domain: TimeDomain, operatorUids: readonly string[]): TimerSpec {
  return { operator: operatorUids[t.operator]!, domain, time: t.time, key: t.key, namespace: t.namespace };
}

/**
 * Orders buckets of one timer per string key by reusing a sorted list of the keys earlier
 * buckets held. Successive buckets of a window operator hold mostly the same keys (every key
 * with an open window), so ranking a bucket's timers by that list (a lookup per key, then one
 * pass) replaces sorting every bucket's keys, which costs about 3 ms per 10,000 keys. Keys new to
 * the list are sorted alone and merged in. The order is exactly that of sort() on the keys.
 */
export class StringKeyOrder {
  /** Buckets of fewer timers are sorted alone. */
  static readonly minBucket = 64;
  /** Sorted keys of earlier buckets; every key's index in it is in `rank`. */
  private keys: string[] = [];
  private rank = new Map<string, number>();

  /** The timers of `byKey` (one per key, every key a string) sorted by key. */
  sort(byKey: ReadonlyMap<string | number, QueuedTimer>): QueuedTimer[] {
    // A small bucket (session windows' timers spread over many times) is sorted alone: walking
    // the list would cost more, and it keeps the list of the large buckets.
    if (byKey.size < StringKeyOrder.minBucket) return [...byKey.values()].sort(compareStringKeys);
    const known = this.keys;
    if (known.length > 2 * byKey.size) {
      // Mostly keys this bucket does not hold: sort, and start again from this bucket's keys.
      const sorted = [...byKey.values()].sort(compareStringKeys);
      this.remember(sorted.map((t) => t.key as string));
      return sorted;
    }
    const rank = this.rank;
    const slots: Array<QueuedTimer | undefined> = new Array(known.length);
    const fresh: QueuedTimer[] = [];
    byKey.forEach((timer) => {
      const r = rank.get(timer.key as string);
      if (r === undefined) fresh.push(timer);
      else slots[r] = timer;
    });
    const ranked: QueuedTimer[] = [];
    for (let i = 0; i < slots.length; i++) {
      const timer = slots[i];
      if (timer !== undefined) ranked.push(timer);
    }
    if (fresh.length === 0) return ranked;
    fresh.sort(compareStringKeys);
    const sorted = mergeByKey(ranked, fresh);
    // Remember the new keys too, unless the list would hold mostly keys this bucket no longer
    // has (the key set moved on): then start again from this bucket's keys.
    this.remember(
      known.length + fresh.length > 2 * byKey.size
        ? sorted.map((t) => t.key as string)
        : mergeKeys(
            known,
            fresh.map((t) => t.key as string),
          ),
    );
    return sorted;
  }

  private remember(keys: string[]): void {
    this.keys = keys;
    this.rank = new Map(keys.map((k, i) => [k, i]));
  }
}

const compareStringKeys = (a: QueuedTimer, b: QueuedTimer): number =>
  (a.key as string) < (b.key as string) ? -1 : (a.key as string) > (b.key as string) ? 1 : 0;

function mergeByKey(a: readonly QueuedTimer[], b: readonly QueuedTimer[]): QueuedTimer[] {
  const out: QueuedTimer[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) out.push(compareStringKeys(a[i]!, b[j]!) <= 0 ? a[i++]! : b[j++]!);
  while (i < a.length) out.push(a[i++]!);
  while (j < b.length) out.push(b[j++]!);
  return out;
}

function mergeKeys(a: readonly string[], b: readonly string[]): string[] {
  const out: string[] = [];
  let i = 0;
  let j = 0;
  while (i < a.length && j < b.length) out.push(a[i]! <= b[j]! ? a[i++]! : b[j++]!);
  while (i < a.length) out.push(a[i++]!);
  while (j < b.length) out.push(b[j++]!);
  return out;
}

/** compareTimers for timers of the same time. */
function compareSameTime(a: QueuedTimer, b: QueuedTimer): number {
  return compareScalars(a.key, b.key) || compareScalars(a.namespace, b.namespace) || a.operator - b.operator;
}

/**
 * Min-heap of distinct times, each with a bucket of timers. It is also its own undo target
 * for the journal: `undo(timer, 1)` removes an added timer, `undo(timer, 0)` restores a deleted one.
 */
export class TimerQueue implements Undoable {
  private readonly buckets = new Map<number, Bucket>();
  private readonly keyOrder = new StringKeyOrder();
  private readonly heap: number[] = [];
  private count = 0;
  /**
   * The bucket whose timers fireDue is firing, out of `buckets`: registrations and deletions of
   * its time made by those timers (or undone by the journal) apply to it, as in Flink, where due
   * timers leave the queue one at a time.
   */
  private firing: Bucket | undefined = undefined;
  private firingTime = Number.NaN;
  /** Timers of the firing time registered while it fires; fireDue slots them into its order. */
  private readonly firingAdded: QueuedTimer[] = [];

  get size(): number {
    return this.count;
  }

  has(operator: number, time: number, key: string | number, namespace: TimerNamespace): boolean {
    if (time === this.firingTime) return this.firing!.find(operator, key, namespace)?.done === false;
    return this.buckets.get(time)?.find(operator, key, namespace) !== undefined;
  }

  /** Returns true if the timer was added (false if it already existed). */
  add(operator: number, time: number, key: string | number, namespace: TimerNamespace): boolean {
    return this.insert(operator, time, key, namespace) !== undefined;
  }

  /** Returns true if the timer existed. */
  delete(operator: number, time: number, key: string | number, namespace: TimerNamespace): boolean {
    return this.remove(operator, time, key, namespace) !== undefined;
  }

  /** Adds a timer; returns it, or undefined if it already existed. */
  insert(
    operator: number,
    time: number,
    key: string | number,
    namespace: TimerNamespace,
  ): QueuedTimer | undefined {
    if (time === this.firingTime) return this.insertFiring(operator, time, key, namespace);
    let bucket = this.buckets.get(time);
    if (bucket === undefined) {
      bucket = new Bucket();
      this.buckets.set(time, bucket);
      this.push(time);
    }
    const timer = bucket.add(operator, time, key, namespace);
    if (timer !== undefined) this.count++;
    return timer;
  }

  /** Deletes a timer; returns it, or undefined if it did not exist. */
  remove(
    operator: number,
    time: number,
    key: string | number,
    namespace: TimerNamespace,
  ): QueuedTimer | undefined {
    if (time === this.firingTime) {
      // A timer of the firing time: one that has not fired yet will not.
      const timer = this.firing!.find(operator, key, namespace);
      if (timer === undefined || timer.done) return undefined;
      timer.done = true;
      this.count--;
      return timer;
    }
    const bucket = this.buckets.get(time);
    if (bucket === undefined) return undefined;
    const timer = bucket.find(operator, key, namespace);
    if (timer === undefined) return undefined;
    bucket.remove(timer);
    this.count--;
    // An empty bucket stays in the heap; popDue skips it (lazy deletion).
    return timer;
  }

  /** Journal undo: `added` 1 removes `timer`, 0 adds it back. */
  undo(timer: unknown, added: unknown): void {
    const t = timer as QueuedTimer;
    if (added === 1) this.remove(t.operator, t.time, t.key, t.namespace);
    else this.add(t.operator, t.time, t.key, t.namespace);
  }

  /** The earliest pending time, or +Infinity. */
  peekTime(): number {
    while (this.heap.length > 0) {
      const t = this.heap[0]!;
      const bucket = this.buckets.get(t);
      if (bucket !== undefined && bucket.size > 0) return t;
      this.pop();
      if (bucket !== undefined) this.buckets.delete(t);
    }
    return Number.POSITIVE_INFINITY;
  }

  /**
   * Fires every timer with time <= limit in (time, key, namespace, operator) order, removing
   * each from the queue just before `fire` runs. What `fire` does to timers that are due takes
   * effect: a deleted one does not fire, a registered one (of the firing time or later, up to
   * `limit`) fires in its place in the order, and registering a pending one again is a no-op.
   * `fire` must not throw (the shard task catches a timer's errors).
   */
  fireDue(limit: number, fire: (timer: QueuedTimer) => void): void {
    // The heap's root is at or before every pending time (emptied buckets stay in the heap), so
    // this answers most calls (one per record) without a bucket lookup.
    while (this.heap.length > 0 && this.heap[0]! <= limit) {
      const time = this.peekTime();
      if (time > limit || this.heap.length === 0) return; // +Infinity: only emptied buckets were left
      this.pop();
      const bucket = this.buckets.get(time)!;
      this.buckets.delete(time);
      this.firing = bucket;
      this.firingTime = time;
      try {
        const due = bucket.timers(this.keyOrder);
        for (let i = 0; i < due.length; i++) {
          const timer = due[i]!;
          if (timer.done) continue; // deleted by a timer before it
          timer.done = true;
          this.count--;
          fire(timer);
          if (this.firingAdded.length > 0) this.slotInAdded(due, i + 1);
          if (this.heap.length > 0 && this.heap[0]! < time && this.peekTime() < time) {
            // The timer registered one for an earlier time, which is due: it fires first. The
            // rest of this time's timers go back to the queue, without those already done.
            for (const t of due)
              if (t.done && bucket.find(t.operator, t.key, t.namespace) === t) bucket.remove(t);
            this.buckets.set(time, bucket);
            this.push(time);
            break;
          }
        }
      } finally {
        this.firing = undefined;
        this.firingTime = Number.NaN;
        this.firingAdded.length = 0;
      }
    }
  }

  /** insert() for the firing time. */
  private insertFiring(
    operator: number,
    time: number,
    key: string | number,
    namespace: TimerNamespace,
  ): QueuedTimer | undefined {
    const bucket = this.firing!;
    const existing = bucket.find(operator, key, namespace);
    if (existing !== undefined) {
      if (!existing.done) return undefined; // pending: registration is idempotent
      bucket.remove(existing); // fired or deleted in this round: it is pending again
    }
    const timer = bucket.add(operator, time, key, namespace)!;
    this.count++;
    this.firingAdded.push(timer);
    return timer;
  }

  /** Puts the timers registered for the firing time into `due[from..]`, which is sorted. */
  private slotInAdded(due: QueuedTimer[], from: number): void {
    for (const timer of this.firingAdded) {
      if (timer.done) continue; // registered and deleted again
      let lo = from;
      let hi = due.length;
      while (lo < hi) {
        const mid = (lo + hi) >> 1;
        if (compareSameTime(due[mid]!, timer) <= 0) lo = mid + 1;
        else hi = mid;
      }
      due.splice(lo, 0, timer);
    }
    this.firingAdded.length = 0;
  }

  /** Calls fn for every timer with time <= limit, in no particular order. */
  forEachDue(limit: number, fn: (timer: QueuedTimer) => void): void {
    // Walk the heap from its root: a node later than `limit` has no due descendants, so this
    // visits the due times (and their boundary) instead of every pending time.
    const heap = this.heap;
    if (heap.length === 0 || heap[0]! > limit) return;
    const stack = [0];
    const seen = new Set<number>(); // a time may sit in the heap twice (re-added after emptying)
    while (stack.length > 0) {
      const i = stack.pop()!;
      const time = heap[i]!;
      if (time > limit) continue;
      if (!seen.has(time)) {
        seen.add(time);
        this.buckets.get(time)?.forEach(fn);
      }
      const l = 2 * i + 1;
      if (l < heap.length) stack.push(l);
      if (l + 1 < heap.length) stack.push(l + 1);
    }
  }

  all(): QueuedTimer[] {
    const out: QueuedTimer[] = [];
    for (const time of this.sortedTimes())
      for (const timer of this.buckets.get(time)!.timers(this.keyOrder)) out.push(timer);
    return out;
  }

  /**
   * Checkpoint specs, bucket by bucket in the order the buckets were created (not sorted: a
   * checkpoint after every batch would sort every pending time), each in bucket order.
   */
  toSpecs(domain: TimeDomain, operatorUids: readonly string[]): TimerSpec[] {
    return this.appendSpecs([], domain, operatorUids);
  }

  /** toSpecs into `out` (a checkpoint's one array for both domains). */
  appendSpecs(out: TimerSpec[], domain: TimeDomain, operatorUids: readonly string[]): TimerSpec[] {
    for (const bucket of this.buckets.values()) {
      if (bucket.size === 0) continue;
      for (const t of bucket.timerSpecs(domain, operatorUids)) out.push(t);
    }
    return out;
  }

  /** Times with at least one timer, ascending. */
  private sortedTimes(): number[] {
    const times: number[] = [];
    for (const [time, bucket] of this.buckets) if (bucket.size > 0) times.push(time);
    return times.sort((a, b) => a - b);
  }

  private push(time: number): void {
    const heap = this.heap;
    heap.push(time);
    let i = heap.length - 1;
    while (i > 0) {
      const parent = (i - 1) >> 1;
      if (heap[parent]! <= time) break;
      heap[i] = heap[parent]!;
      i = parent;
    }
    heap[i] = time;
  }

  private pop(): void {
    const heap = this.heap;
    const last = heap.pop()!;
    if (heap.length === 0) return;
    let i = 0;
    const n = heap.length;
    for (;;) {
      const l = 2 * i + 1;
      if (l >= n) break;
      const r = l + 1;
      const c = r < n && heap[r]! < heap[l]! ? r : l;
      if (heap[c]! >= last) break;
      heap[i] = heap[c]!;
      i = c;
    }
    heap[i] = last;
  }
}
