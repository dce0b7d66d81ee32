/**
 * Window operators as keyed process functions, with Flink's WindowOperator + EventTimeTrigger
 * semantics: fire at WM >= end-1; late firing with the whole contents within allowed lateness;
 * cleanup at end-1+lateness; session windows merge when they overlap or touch.
 */
import type { AggregateFunction } from './aggregates.ts';
import { type KeyedProcessFunction, type ProcessContext, type Timer, TimerOutputError } from './processor.ts';
import { type MapStateDescriptor, mapState, type StateKey, type StoredMapState } from './state.ts';
import {
  type SessionWindows,
  type SlidingWindows,
  type TimeWindow,
  type TumblingWindows,
  windowStart,
} from './windows.ts';

export interface WindowResult<K, R> {
  readonly key: K;
  readonly window: TimeWindow;
  readonly result: R;
  /** Set on an early firing (`earlyFiring`): the window's contents so far, before its end. */
  readonly early?: true;
}

export type WindowFunction<K, R, Out> = (result: WindowResult<K, R>) => Out;

export interface WindowOperatorOptions<In, Acc, R, Out> {
  readonly aggregate: AggregateFunction<In, Acc, R>;
  readonly windowFunction: WindowFunction<StateKey, R, Out> | undefined;
  readonly allowedLateness: number;
  readonly lateOutput: string;
  /** Early firings every this many ms of event time before the end (aligned windows only). */
  readonly earlyFiring?: number | undefined;
}

type AlignedSpec<Acc> = { w: MapStateDescriptor<number, Acc> };

export function alignedWindowOperator<In, Acc, R, Out>(
  assigner: TumblingWindows | SlidingWindows,
  options: WindowOperatorOptions<In, Acc, R, Out>,
): KeyedProcessFunction<In, Out, AlignedSpec<Acc>> {
  const { aggregate, windowFunction, allowedLateness: lateness, lateOutput, earlyFiring: every } = options;
  const size = assigner.size;
  // The starts of an element's windows, latest first (assignAlignedStarts without the array):
  // from windowStart(ts, offset, step) down by `step` while start > ts - size.
  const step = assigner.kind === 'tumbling' ? assigner.size : assigner.slide;
  const offset = assigner.offset;
  // Results of one window share its (read-only) TimeWindow object.
  let window: TimeWindow = { start: Number.NaN, end: Number.NaN };
  /** Emits the window's result: at its end, or at `earlyAt` as an early firing. */
  const fire = (
    ctx: ProcessContext<Out, AlignedSpec<Acc>>,
    start: number,
    acc: Acc,
    earlyAt?: number,
  ): void => {
    if (acc === null) return; // as Flink's heap state: an empty window (add returned null)
    const result = aggregate.result(acc);
    if (result === null || result === undefined) return; // as Flink: a window with null contents emits nothing
    // Frozen: every key's result shares it, so a function changing it would change the others'.
    if (window.start !== start) window = Object.freeze({ start, end: start + size });
    const r: WindowResult<StateKey, R> =
      earlyAt === undefined
        ? { key: ctx.key, window, result }
        : { key: ctx.key, window, result, early: true };
    ctx.emit(windowFunction === undefined ? (r as Out) : windowFunction(r), earlyAt ?? start + size - 1);
  };
  // Early firings happen at start + k * every - 1 (k >= 1) before the window's last millisecond.
  // The next one is the first after the watermark, so a watermark that jumps fires one, not a
  // burst of identical results.
  const registerNextEarly = (ctx: ProcessContext<Out, AlignedSpec<Acc>>, start: number): void => {
    if (every === undefined) return;
    const k = Math.max(1, Math.floor((ctx.currentWatermark - start + 1) / every) + 1);
    const at = start + k * every - 1;
    if (at < start + size - 1) ctx.timers.registerEventTimeTimer(at, start);
  };
  return {
    state: { w: mapState<number, Acc>({ layout: 'by-map-key' }) },
    processElement(value, ctx) {
      const wm = ctx.currentWatermark;
      const windows = ctx.state.w;
      const ts = ctx.timestamp;
      let accepted = false;
      for (let start = windowStart(ts, offset, step); start > ts - size; start -= step) {
        const maxTs = start + size - 1;
        if (maxTs + lateness <= wm) continue; // window already cleaned up: late for it
        accepted = true;
        const prev = windows.get(start);
        // An add that returned null emptied the window: the next one starts afresh (as Flink).
        const acc = aggregate.add(value, prev === undefined || prev === null ? aggregate.create() : prev);
        windows.put(start, acc);
        if (prev === undefined) {
          // Timers live until cleanup, so registering them once per window is enough
          // (with no lateness, the firing and the cleanup timer are the same timer).
          if (maxTs > wm && lateness > 0) ctx.timers.registerEventTimeTimer(maxTs, start);
          ctx.timers.registerEventTimeTimer(maxTs + lateness, start);
          if (maxTs > wm) registerNextEarly(ctx, start);
        }
        if (maxTs <= wm) fire(ctx, start, acc); // late firing within allowed lateness
      }
      if (!accepted && ts + lateness <= wm) ctx.output(lateOutput, value);
    },
    onTimer(timer: Timer, ctx) {
      const start = timer.namespace as number;
      const maxTs = start + size - 1;
      const acc = ctx.state.w.get(start);
      if (acc === undefined) return;
      // A firing that fails (the window function throws) is dead-lettered, and the window's
      // cleanup and next early firing still happen (TimerOutputError).
      let failure: TimerOutputError | undefined;
      if (timer.time < maxTs) {
        // An early firing: skipped if the pipeline no longer asks for them (a restore), or if
        // the watermark already completes the window (its end firing follows at once).
        if (every === undefined || ctx.currentWatermark >= maxTs) return;
        try {
          fire(ctx, start, acc, timer.time);
        } catch (error) {
          failure = new TimerOutputError(error);
        }
        registerNextEarly(ctx, start);
      } else {
        if (timer.time === maxTs) {
          try {
            fire(ctx, start, acc);
          } catch (error) {
            failure = new TimerOutputError(error);
          }
        }
        // Cleanup at end-1+lateness. After a restore with another allowed lateness, a saved timer
        // past that time cleans up too, and one before it makes sure the cleanup timer exists
        // (registering an existing timer is a no-op).
        if (timer.time >= maxTs + lateness) ctx.state.w.remove(start);
        else ctx.timers.registerEventTimeTimer(maxTs + lateness, start);
      }
      if (failure !== undefined) throw failure;
    },
  };
}

type SessionSpec<Acc> = { w: MapStateDescriptor<number, [number, Acc]> };

export function sessionWindowOperator<In, Acc, R, Out>(
  assigner: SessionWindows,
  options: WindowOperatorOptions<In, Acc, R, Out>,
): KeyedProcessFunction<In, Out, SessionSpec<Acc>> {
  const { aggregate, windowFunction, allowedLateness: lateness, lateOutput } = options;
  const merge = aggregate.merge;
  const fire = (ctx: ProcessContext<Out, SessionSpec<Acc>>, start: number, end: number, acc: Acc): void => {
    if (acc === null) return; // as in aligned windows
    const result = aggregate.result(acc);
    if (result === null || result === undefined) return; // as in aligned windows
    const r: WindowResult<StateKey, R> = { key: ctx.key, window: { start, end }, result };
    ctx.emit(windowFunction === undefined ? (r as Out) : windowFunction(r), end - 1);
  };
  // The sessions an element merges with, gathered by `collect` into [0, merged) of lists reused by
  // every element (processElement does not nest), so an element allocates no list.
  let newStart = 0;
  let newEnd = 0;
  let merged = 0;
  let sessions = 0; // the key's sessions
  const mergedStarts: number[] = [];
  const mergedSessions: Array<[number, Acc]> = [];
  const collect = (session: [number, Acc], s: number): void => {
    sessions++;
    // Existing sessions are pairwise disjoint and non-touching, so only those that intersect
    // the new window take part in the merge (Flink's TimeWindow.intersects).
    if (s <= newEnd && session[0] >= newStart) {
      mergedStarts[merged] = s;
      mergedSessions[merged] = session;
      merged++;
    }
  };
  return {
    state: { w: mapState<number, [number, Acc]>() },
    processElement(value, ctx) {
      const wm = ctx.currentWatermark;
      // The sessions are read as stored; only accumulators reach user code, through handOut.
      const windows = ctx.state.w as StoredMapState<number, [number, Acc]>;
      newStart = ctx.timestamp;
      newEnd = ctx.timestamp + assigner.gap;
      merged = 0;
      sessions = 0;
      windows.forEachStored(collect);
      const n = merged;
      if (n > 1) sortByStart(mergedStarts, mergedSessions, n);
      let start = newStart;
      let end = newEnd;
      for (let i = 0; i < n; i++) {
        start = Math.min(start, mergedStarts[i]!);
        end = Math.max(end, mergedSessions[i]![0]);
      }
      const maxTs = end - 1;
      if (maxTs + lateness <= wm) {
        // Only possible when nothing merged: every live session ends after the watermark.
        if (ctx.timestamp + lateness <= wm) ctx.output(lateOutput, value);
        return;
      }
      let acc: Acc | undefined;
      let keptEnd: number | undefined; // the old end of the merged session whose start the result keeps
      for (let i = 0; i < n; i++) {
        const s = mergedStarts[i]!;
        const [e, a] = mergedSessions[i]!;
        if (s === start) keptEnd = e;
        // The key's one session, extended: put() below replaces it where it is, in one map write
        // (a removal first would shrink the map and grow it again).
        if (s !== start || sessions > 1) windows.remove(s);
        // Null accumulators (an add or merge returned null) are empty: skipped, as Flink merges.
        if (a !== null)
          acc = acc === undefined || acc === null ? windows.handOut(a) : merge!(acc, windows.handOut(a));
      }
      acc = aggregate.add(value, acc === undefined || acc === null ? aggregate.create() : acc);
      windows.put(start, [end, acc]);
      // Each session has a timer (an alarm) at or before its next action: its firing at end-1, or
      // its cleanup at end-1+lateness once fired. An extended or merged session keeps the alarm of
      // the session whose start it keeps, which is not later than its new next action, except when
      // a late element reopens a fired session (its alarm is the old cleanup); onTimer moves the
      // alarm on to the session's end as it is then. Flink deletes and registers the timers of
      // every merged session per element instead: the same firings, at two timer operations per
      // element. The alarms of sessions merged into another fire and find no session.
      if (keptEnd === undefined)
        ctx.timers.registerEventTimeTimer(maxTs > wm ? maxTs : maxTs + lateness, start);
      else if (maxTs > wm && keptEnd - 1 <= wm) ctx.timers.registerEventTimeTimer(maxTs, start);
      if (maxTs <= wm) fire(ctx, start, end, acc);
    },
    onTimer(timer, ctx) {
      const start = timer.namespace as number;
      const windows = ctx.state.w as StoredMapState<number, [number, Acc]>;
      const session = windows.stored(start);
      if (session === undefined) return; // merged into another session, whose own timer fires it
      const [end, acc] = session;
      const fireAt = end - 1;
      const cleanupAt = fireAt + lateness;
      const t = timer.time;
      if (t < fireAt) {
        // Extended since its alarm was set: not fired yet (its end was past the watermark when it
        // grew, or it would have fired then), so move the alarm to the end.
        ctx.timers.registerEventTimeTimer(fireAt, start);
        return;
      }
      // As in aligned windows: a failed firing is dead-lettered, and the session still cleaned up.
      let failure: TimerOutputError | undefined;
      if (t === fireAt) {
        try {
          fire(ctx, start, end, windows.handOut(acc));
        } catch (error) {
          failure = new TimerOutputError(error);
        }
      }
      // Past its cleanup time (also a saved alarm after a restore with a shorter lateness): removed.
      if (t >= cleanupAt) ctx.state.w.remove(start);
      else ctx.timers.registerEventTimeTimer(cleanupAt, start); // fired: clean up later
      if (failure !== undefined) throw failure;
    },
  };
}

/** Sorts [0, n) of the merged sessions by start (insertion sort: rarely more than two), lists kept parallel. */
function sortByStart<T>(starts: number[], sessions: T[], n: number): void {
  for (let i = 1; i < n; i++) {
    for (let j = i; j > 0 && starts[j - 1]! > starts[j]!; j--) {
      [starts[j - 1], starts[j]] = [starts[j]!, starts[j - 1]!];
      [sessions[j - 1], sessions[j]] = [sessions[j]!, sessions[j - 1]!];
    }
  }
}
