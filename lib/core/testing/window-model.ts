/**
 * A small reference model of Flink's WindowOperator with the EventTimeTrigger, for
 * model-based tests of floe's window operators. It shares no code with windows.ts or
 * window-operator.ts: window starts use the textbook formula, per-(key, window) contents are
 * plain arrays of elements, sessions merge as TimeWindow.mergeWindows merges them, and timers
 * are a plain list fired one at a time, smallest (time, key, window) first.
 *
 * Flink's rules, as modelled (WindowOperator.processElement / onEventTime):
 * - a window is [start, end); maxTimestamp = end - 1; cleanup time = maxTimestamp + lateness;
 * - an element skips every window whose cleanup time <= watermark (isWindowLate); each other
 *   window takes it, then fires at once if maxTimestamp <= watermark (a late firing with the
 *   whole contents), else has a timer at maxTimestamp; each gets a cleanup timer;
 * - an element that no window took goes to the late output if ts + lateness <= watermark;
 * - a timer at maxTimestamp fires the window; one at the cleanup time drops its contents;
 * - sessions: the new window [ts, ts + gap) merges with every window it intersects
 *   (start <= other.end && end >= other.start: touching windows merge); the merged windows'
 *   timers are deleted and the result gets a trigger timer if its end is after the watermark
 *   (EventTimeTrigger.onMerge). A window contained in a live one is that window (no merge).
 *
 * floe's own additions, modelled from docs/dsl.md:
 * - the watermark advances after each element to max ts - bound - 1, firing due timers;
 * - timers due together fire in (time, key, namespace) order, keys numbers before strings;
 * - a window whose result is null emits nothing;
 * - early firings (aligned windows): boundaries start + k*every - 1 (k >= 1) before the window's
 *   last millisecond; a window opening at watermark w waits for the first boundary after w; at a
 *   boundary the window fires early unless the watermark already completes it, then waits for the
 *   next boundary after the watermark.
 * - merged session contents are in window-start order, then the new element (Flink leaves the
 *   order of a merge unspecified).
 */

export type ModelKey = string | number;

export type ModelAssigner =
  | { readonly kind: 'tumbling'; readonly size: number; readonly offset: number }
  | { readonly kind: 'sliding'; readonly size: number; readonly slide: number; readonly offset: number }
  | { readonly kind: 'session'; readonly gap: number };

export interface ModelOptions<E> {
  readonly assigner: ModelAssigner;
  readonly lateness: number;
  /** Bounded out-of-orderness: the watermark is max ts - bound - 1. */
  readonly bound: number;
  /** Early firing interval (aligned windows only). */
  readonly early?: number | undefined;
  readonly key: (e: E) => ModelKey;
  readonly timestamp: (e: E) => number;
  /** The window's result from its contents, or null to emit nothing. */
  readonly result: (contents: readonly E[]) => unknown;
}

export type ModelOutput<E> =
  | {
      readonly sink: 'window';
      readonly key: ModelKey;
      readonly start: number;
      readonly end: number;
      readonly result: unknown;
      readonly early: boolean;
    }
  | { readonly sink: 'late'; readonly element: E };

interface Win<E> {
  readonly start: number;
  readonly end: number;
  readonly contents: E[];
}

interface ModelTimer {
  readonly time: number;
  readonly key: ModelKey;
  readonly start: number;
  readonly end: number;
}

/** Positive remainder. */
const mod = (a: number, n: number): number => ((a % n) + n) % n;

/** Flink's TimeWindow.getWindowStartWithOffset, with a non-negative remainder. */
export const modelWindowStart = (ts: number, offset: number, size: number): number =>
  ts - mod(ts - offset, size);

/** The latest window start of an aligned assigner for ts (a window only if > ts - size). */
const start0 = (a: ModelAssigner, ts: number): number =>
  a.kind === 'session' ? ts : modelWindowStart(ts, a.offset, a.kind === 'tumbling' ? a.size : a.slide);

const compareKeys = (a: ModelKey, b: ModelKey): number => {
  if (typeof a === 'number' && typeof b === 'number') return a - b;
  if (typeof a === 'number') return -1;
  if (typeof b === 'number') return 1;
  return a < b ? -1 : a > b ? 1 : 0;
};

const compareTimers = (a: ModelTimer, b: ModelTimer): number =>
  a.time - b.time || compareKeys(a.key, b.key) || a.start - b.start || a.end - b.end;

const sameTimer = (a: ModelTimer, b: ModelTimer): boolean => compareTimers(a, b) === 0 && a.key === b.key;

/** How often the model met each case (for checking that a test's input reaches them). */
export interface ModelCoverage {
  /** Elements sent to the late output. */
  late: number;
  /** Firings caused by an element (late firings within the allowed lateness). */
  lateFirings: number;
  /** Elements that fell in no window at all (sliding windows with slide > size). */
  noWindow: number;
  earlyFirings: number;
  /** Early boundaries skipped because the watermark completed the window. */
  earlySkipped: number;
  /** Firings whose result was null (nothing emitted). */
  nullResults: number;
  /** Timers fired in one advance at one time for several keys. */
  sameTimeKeys: number;
  /**
   * Session merges; of them, merges bridging two or more sessions, merges of windows that only
   * touch, and merges that fire at once (by an element within the allowed lateness).
   */
  merges: number;
  bridges: number;
  touchingMerges: number;
  lateMerges: number;
  /** Session elements inside a live window (no merge). */
  contained: number;
}

export const emptyCoverage = (): ModelCoverage => ({
  late: 0,
  lateFirings: 0,
  noWindow: 0,
  earlyFirings: 0,
  earlySkipped: 0,
  nullResults: 0,
  sameTimeKeys: 0,
  merges: 0,
  bridges: 0,
  touchingMerges: 0,
  lateMerges: 0,
  contained: 0,
});

export class WindowModel<E> {
  watermark = Number.NEGATIVE_INFINITY;
  readonly outputs: ModelOutput<E>[] = [];
  private maxTimestamp = Number.NEGATIVE_INFINITY;
  /** Live windows per key (by JSON of the key, so 2 and '2' differ). */
  private readonly windows = new Map<string, { key: ModelKey; list: Win<E>[] }>();
  private timers: ModelTimer[] = [];

  constructor(
    private readonly options: ModelOptions<E>,
    readonly coverage: ModelCoverage = emptyCoverage(),
  ) {}

  /** Processes one element at the current watermark, then advances the watermark. */
  element(e: E): void {
    const ts = this.options.timestamp(e);
    if (this.options.assigner.kind === 'session') this.sessionElement(e, ts, this.options.assigner.gap);
    else this.alignedElement(e, ts);
    if (ts > this.maxTimestamp) {
      this.maxTimestamp = ts;
      this.advance(ts - this.options.bound - 1);
    }
  }

  /** Advances the watermark (never back), firing due timers one at a time in order. */
  advance(watermark: number): void {
    if (!(watermark > this.watermark)) return;
    this.watermark = watermark;
    let previous: ModelTimer | undefined;
    for (;;) {
      let next: ModelTimer | undefined;
      for (const t of this.timers)
        if (t.time <= watermark && (next === undefined || compareTimers(t, next) < 0)) next = t;
      if (next === undefined) return;
      const fired = next;
      if (previous !== undefined && previous.time === fired.time && previous.key !== fired.key) {
        this.coverage.sameTimeKeys++;
      }
      previous = fired;
      this.timers = this.timers.filter((t) => !sameTimer(t, fired));
      this.onTimer(fired);
    }
  }

  /** Live windows and timers left (none after the watermark reached +inf). */
  get pending(): { windows: number; timers: number } {
    let windows = 0;
    for (const { list } of this.windows.values()) windows += list.length;
    return { windows, timers: this.timers.length };
  }

  private list(key: ModelKey): Win<E>[] {
    const id = JSON.stringify(key);
    let entry = this.windows.get(id);
    if (entry === undefined) {
      entry = { key, list: [] };
      this.windows.set(id, entry);
    }
    return entry.list;
  }

  private register(key: ModelKey, w: { start: number; end: number }, time: number): void {
    const t = { time, key, start: w.start, end: w.end };
    if (!this.timers.some((o) => sameTimer(o, t))) this.timers.push(t);
  }

  private deleteTimer(key: ModelKey, w: { start: number; end: number }, time: number): void {
    const t = { time, key, start: w.start, end: w.end };
    this.timers = this.timers.filter((o) => !sameTimer(o, t));
  }

  private emit(key: ModelKey, w: Win<E>, early: boolean): void {
    const result = this.options.result([...w.contents]); // a snapshot: contents grow later
    if (result === null || result === undefined) {
      this.coverage.nullResults++;
      return;
    }
    if (early) this.coverage.earlyFirings++;
    this.outputs.push({ sink: 'window', key, start: w.start, end: w.end, result, early });
  }

  /** Registers the window's next early boundary after the watermark, if before its end. */
  private registerNextEarly(key: ModelKey, w: Win<E>): void {
    const every = this.options.early;
    if (every === undefined) return;
    for (let b = w.start + every - 1; b < w.end - 1; b += every) {
      if (b > this.watermark) {
        this.register(key, w, b);
        return;
      }
    }
  }

  private alignedElement(e: E, ts: number): void {
    const a = this.options.assigner;
    if (a.kind === 'session') throw new Error('unreachable');
    const { lateness } = this.options;
    const step = a.kind === 'tumbling' ? a.size : a.slide;
    const key = this.options.key(e);
    const list = this.list(key);
    let accepted = false;
    // Flink's assignWindows order: latest start first.
    for (let start = modelWindowStart(ts, a.offset, step); start > ts - a.size; start -= step) {
      const end = start + a.size;
      if (end - 1 + lateness <= this.watermark) continue; // isWindowLate
      accepted = true;
      let w = list.find((x) => x.start === start);
      const opened = w === undefined;
      if (w === undefined) {
        w = { start, end, contents: [] };
        list.push(w);
      }
      w.contents.push(e);
      if (end - 1 <= this.watermark) {
        this.coverage.lateFirings++;
        this.emit(key, w, false);
      } else this.register(key, w, end - 1);
      this.register(key, w, end - 1 + lateness);
      if (opened && end - 1 > this.watermark) this.registerNextEarly(key, w);
    }
    if (!accepted && ts + lateness <= this.watermark) this.late(e);
    if (start0(a, ts) <= ts - a.size) this.coverage.noWindow++;
  }

  private sessionElement(e: E, ts: number, gap: number): void {
    const { lateness } = this.options;
    const key = this.options.key(e);
    const list = this.list(key);
    const fresh = { start: ts, end: ts + gap };
    // TimeWindow.mergeWindows: sort by start, merge runs of intersecting windows.
    const all = [...list, fresh].sort((x, y) => x.start - y.start);
    let group: Array<{ start: number; end: number }> = [];
    let span = { start: 0, end: 0 };
    let found: { group: typeof group; span: typeof span } | undefined;
    for (const w of all) {
      if (group.length > 0 && span.start <= w.end && span.end >= w.start) {
        group.push(w);
        span = { start: Math.min(span.start, w.start), end: Math.max(span.end, w.end) };
      } else {
        if (group.includes(fresh)) found = { group, span };
        group = [w];
        span = { start: w.start, end: w.end };
      }
    }
    if (group.includes(fresh)) found = { group, span };
    if (found === undefined) throw new Error('model: the new window is in no group');
    const merged = list.filter((w) => found.group.includes(w));
    let actual: Win<E>;
    if (merged.length === 0) {
      actual = { start: fresh.start, end: fresh.end, contents: [] };
      if (actual.end - 1 + lateness <= this.watermark) {
        // isWindowLate: retired at once; the element is skipped.
        if (ts + lateness <= this.watermark) this.late(e);
        return;
      }
      list.push(actual);
    } else if (
      merged.length === 1 &&
      merged[0]!.start === found.span.start &&
      merged[0]!.end === found.span.end
    ) {
      actual = merged[0]!; // contained in a live window: no merge
      this.coverage.contained++;
    } else {
      if (found.span.end - 1 + lateness <= this.watermark) {
        throw new Error('model: a merge produced a late window (Flink throws here)');
      }
      actual = { start: found.span.start, end: found.span.end, contents: [] };
      this.coverage.merges++;
      if (merged.length > 1) this.coverage.bridges++;
      if (merged.some((m) => m.end === fresh.start || m.start === fresh.end)) this.coverage.touchingMerges++;
      if (actual.end - 1 <= this.watermark) this.coverage.lateMerges++;
      // EventTimeTrigger.onMerge, then clear() and deleteCleanupTimer for each merged window.
      if (actual.end - 1 > this.watermark) this.register(key, actual, actual.end - 1);
      for (const m of [...merged].sort((x, y) => x.start - y.start)) {
        this.deleteTimer(key, m, m.end - 1);
        this.deleteTimer(key, m, m.end - 1 + lateness);
        actual.contents.push(...m.contents);
        list.splice(list.indexOf(m), 1);
      }
      list.push(actual);
    }
    actual.contents.push(e);
    if (actual.end - 1 <= this.watermark) {
      this.coverage.lateFirings++;
      this.emit(key, actual, false);
    } else this.register(key, actual, actual.end - 1);
    this.register(key, actual, actual.end - 1 + lateness);
  }

  private late(e: E): void {
    this.coverage.late++;
    this.outputs.push({ sink: 'late', element: e });
  }

  private onTimer(t: ModelTimer): void {
    const list = this.list(t.key);
    const w = list.find((x) => x.start === t.start && x.end === t.end);
    if (w === undefined) return;
    const maxTs = w.end - 1;
    if (t.time < maxTs) {
      // An early boundary: none once the watermark completes the window (its end firing follows).
      if (this.watermark >= maxTs) {
        this.coverage.earlySkipped++;
        return;
      }
      this.emit(t.key, w, true);
      this.registerNextEarly(t.key, w);
      return;
    }
    if (t.time === maxTs) this.emit(t.key, w, false);
    if (t.time === maxTs + this.options.lateness) list.splice(list.indexOf(w), 1);
  }
}
