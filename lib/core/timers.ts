/** A timer queue ordered by (time, key, namespace, operator); registration is idempotent. */
import type { TimeDomain, TimerNamespace, TimerSpec } from './checkpoint.ts';

export interface QueuedTimer {
  readonly operator: number;
  readonly time: number;
  readonly key: string | number;
  readonly namespace: TimerNamespace;
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

function timerId(operator: number, key: string | number, namespace: TimerNamespace): string {
  const k = typeof key === 'number' ? `n${key}` : `s${key}`;
  const n = typeof namespace === 'number' ? `n${namespace}` : `s${namespace}`;
  return `${operator}\u0000${k}\u0000${n}`;
}

/** Min-heap of distinct times, each with a bucket of timers. */
export class TimerQueue {
  private readonly buckets = new Map<number, Map<string, QueuedTimer>>();
  private readonly heap: number[] = [];
  private count = 0;

  get size(): number {
    return this.count;
  }

  has(operator: number, time: number, key: string | number, namespace: TimerNamespace): boolean {
    return this.buckets.get(time)?.has(timerId(operator, key, namespace)) ?? false;
  }

  /** Returns true if the timer was added (false if it already existed). */
  add(operator: number, time: number, key: string | number, namespace: TimerNamespace): boolean {
    let bucket = this.buckets.get(time);
    if (bucket === undefined) {
      bucket = new Map();
      this.buckets.set(time, bucket);
      this.push(time);
    }
    const id = timerId(operator, key, namespace);
    if (bucket.has(id)) return false;
    bucket.set(id, { operator, time, key, namespace });
    this.count++;
    return true;
  }

  /** Returns true if the timer existed. */
  delete(operator: number, time: number, key: string | number, namespace: TimerNamespace): boolean {
    const bucket = this.buckets.get(time);
    if (bucket === undefined) return false;
    const removed = bucket.delete(timerId(operator, key, namespace));
    if (removed) this.count--;
    // An empty bucket stays in the heap; popDue skips it (lazy deletion).
    return removed;
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

  /** Removes and returns every timer of the earliest time if it is <= limit, sorted. */
  popDue(limit: number): QueuedTimer[] | undefined {
    const t = this.peekTime();
    if (t > limit || this.heap.length === 0) return undefined;
    this.pop();
    const bucket = this.buckets.get(t)!;
    this.buckets.delete(t);
    this.count -= bucket.size;
    return [...bucket.values()].sort(compareTimers);
  }

  /** Calls fn for every timer with time <= limit, in no particular order. */
  forEachDue(limit: number, fn: (timer: QueuedTimer) => void): void {
    for (const [time, bucket] of this.buckets) {
      if (time <= limit) for (const timer of bucket.values()) fn(timer);
    }
  }

  all(): QueuedTimer[] {
    const out: QueuedTimer[] = [];
    for (const bucket of this.buckets.values()) for (const timer of bucket.values()) out.push(timer);
    return out.sort(compareTimers);
  }

  toSpecs(domain: TimeDomain, operatorUids: readonly string[]): TimerSpec[] {
    return this.all().map((t) => ({
      operator: operatorUids[t.operator]!,
      domain,
      time: t.time,
      key: t.key,
      namespace: t.namespace,
    }));
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
