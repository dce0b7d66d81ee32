/**
 * Window assignment: window starts (with offsets and negative timestamps) checked against
 * Flink's TimeWindow.getWindowStartWithOffset, sliding assignment order and count, and the
 * validation errors of assigners and of the windowing part of the DSL.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { collect, count } from './aggregates.ts';
import { compile } from './compile.ts';
import { pipeline } from './dsl.ts';
import { PipelineDefinitionError } from './errors.ts';
import { boundedOutOfOrderness, monotonic, withIdleness } from './watermarks.ts';
import {
  assignAlignedStarts,
  maxTimestamp,
  type SlidingWindows,
  session,
  sliding,
  tumbling,
  windowStart,
} from './windows.ts';

/** Flink's TimeWindow.getWindowStartWithOffset, transcribed literally (Java `%` == JS `%`). */
function flinkWindowStart(timestamp: number, offset: number, windowSize: number): number {
  const remainder = (timestamp - offset) % windowSize;
  if (remainder < 0) return timestamp - (remainder + windowSize);
  return timestamp - remainder;
}

/** Flink's SlidingEventTimeWindows.assignWindows, as a list of window starts. */
function flinkSlidingStarts(timestamp: number, size: number, slide: number, offset: number): number[] {
  const starts: number[] = [];
  const lastStart = flinkWindowStart(timestamp, offset, slide);
  for (let start = lastStart; start > timestamp - size; start -= slide) starts.push(start);
  return starts;
}

/** Mathematical modulo (always in [0, m)). */
const mod = (a: number, m: number): number => ((a % m) + m) % m;

function definitionError(fn: () => unknown): PipelineDefinitionError {
  try {
    fn();
  } catch (error) {
    expect(error).toBeInstanceOf(PipelineDefinitionError);
    return error as PipelineDefinitionError;
  }
  throw new Error('expected a PipelineDefinitionError, but nothing was thrown');
}

describe('windowStart', () => {
  it.each([
    // [timestamp, offset, size, expected start]
    [0, 0, 10, 0],
    [9, 0, 10, 0],
    [10, 0, 10, 10],
    [11, 0, 10, 10],
    [-1, 0, 10, -10],
    [-9, 0, 10, -10],
    [-10, 0, 10, -10],
    [-11, 0, 10, -20],
    [2, 3, 10, -7],
    [3, 3, 10, 3],
    [12, 3, 10, 3],
    [13, 3, 10, 13],
    [-7, 3, 10, -7],
    [-8, 3, 10, -17],
    [6, -3, 10, -3],
    [7, -3, 10, 7],
    [-3, -3, 10, -3],
    [-4, -3, 10, -13],
    [1_700_000_123_456, 0, 60_000, 1_700_000_100_000],
    [1_700_000_123_456, 15_000, 60_000, 1_700_000_115_000],
    [-1_700_000_123_456, 0, 60_000, -1_700_000_160_000],
  ])('start of ts=%d offset=%d size=%d is %d', (ts, offset, size, expected) => {
    expect(windowStart(ts, offset, size)).toBe(expected);
    expect(flinkWindowStart(ts, offset, size)).toBe(expected);
  });

  it('matches Flink getWindowStartWithOffset for random timestamps, offsets and sizes', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: -1e12, max: 1e12 }),
        fc.integer({ min: 1, max: 1e7 }),
        fc.double({ min: -0.999, max: 0.999, noNaN: true }),
        (ts, size, f) => {
          const offset = Math.trunc(f * size);
          const start = windowStart(ts, offset, size);
          expect(start).toBe(flinkWindowStart(ts, offset, size));
          // The window [start, start + size) contains ts and is aligned to offset.
          expect(start).toBeLessThanOrEqual(ts);
          expect(ts).toBeLessThan(start + size);
          expect(mod(start - offset, size)).toBe(0);
        },
      ),
      { numRuns: 500 },
    );
  });

  it('maxTimestamp is end - 1 (end exclusive)', () => {
    expect(maxTimestamp({ start: 0, end: 10 })).toBe(9);
    expect(maxTimestamp({ start: -20, end: -10 })).toBe(-11);
  });
});

describe('assignAlignedStarts', () => {
  it('assigns exactly one tumbling window, honouring the offset', () => {
    expect(assignAlignedStarts(tumbling({ size: 10 }), 9)).toEqual([0]);
    expect(assignAlignedStarts(tumbling({ size: 10 }), 10)).toEqual([10]);
    expect(assignAlignedStarts(tumbling({ size: 10 }), -1)).toEqual([-10]);
    expect(assignAlignedStarts(tumbling({ size: 10, offset: 3 }), 2)).toEqual([-7]);
    expect(assignAlignedStarts(tumbling({ size: 10, offset: 3 }), 3)).toEqual([3]);
    expect(assignAlignedStarts(tumbling({ size: 10, offset: -3 }), -4)).toEqual([-13]);
  });

  it('assigns sliding windows latest first', () => {
    const w = sliding({ size: 10, slide: 5 });
    expect(assignAlignedStarts(w, 0)).toEqual([0, -5]);
    expect(assignAlignedStarts(w, 4)).toEqual([0, -5]);
    expect(assignAlignedStarts(w, 5)).toEqual([5, 0]);
    expect(assignAlignedStarts(w, 12)).toEqual([10, 5]);
    expect(assignAlignedStarts(w, -1)).toEqual([-5, -10]);
    expect(assignAlignedStarts(w, -6)).toEqual([-10, -15]);
  });

  it('assigns floor or ceil of size/slide sliding windows when size is not a multiple of slide', () => {
    const w = sliding({ size: 10, slide: 4 });
    expect(assignAlignedStarts(w, 9)).toEqual([8, 4, 0]);
    expect(assignAlignedStarts(w, 0)).toEqual([0, -4, -8]);
    expect(assignAlignedStarts(w, 3)).toEqual([0, -4]);
    expect(assignAlignedStarts(w, 1)).toEqual([0, -4, -8]);
    expect(assignAlignedStarts(sliding({ size: 10, slide: 3 }), 0)).toEqual([0, -3, -6, -9]);
  });

  it('assigns sliding windows with a positive or negative offset', () => {
    expect(assignAlignedStarts(sliding({ size: 10, slide: 5, offset: 2 }), 1)).toEqual([-3, -8]);
    expect(assignAlignedStarts(sliding({ size: 10, slide: 5, offset: 2 }), 2)).toEqual([2, -3]);
    expect(assignAlignedStarts(sliding({ size: 10, slide: 5, offset: -2 }), 2)).toEqual([-2, -7]);
    expect(assignAlignedStarts(sliding({ size: 10, slide: 5, offset: -2 }), 3)).toEqual([3, -2]);
  });

  it('a sliding window of size == slide behaves like a tumbling window', () => {
    expect(assignAlignedStarts(sliding({ size: 10, slide: 10 }), 15)).toEqual([10]);
    expect(assignAlignedStarts(sliding({ size: 10, slide: 10 }), -15)).toEqual([-20]);
  });

  it('sliding assignment matches Flink SlidingEventTimeWindows for random parameters', () => {
    fc.assert(
      fc.property(
        fc.integer({ min: -1e9, max: 1e9 }),
        fc.integer({ min: 1, max: 1000 }),
        fc.integer({ min: 1, max: 20 }),
        fc.double({ min: -0.999, max: 0.999, noNaN: true }),
        (ts, slide, factor, f) => {
          const size = slide * factor + (factor > 1 ? (ts & 1) * Math.floor(slide / 2) : 0);
          const offset = Math.trunc(f * slide);
          const assigner: SlidingWindows = sliding({ size, slide, offset });
          const starts = assignAlignedStarts(assigner, ts);
          expect(starts).toEqual(flinkSlidingStarts(ts, size, slide, offset));
          // ceil(size/slide) windows, or one fewer when size is not a multiple of slide.
          if (size % slide === 0) expect(starts.length).toBe(size / slide);
          else expect([Math.floor(size / slide), Math.ceil(size / slide)]).toContain(starts.length);
          for (let i = 0; i < starts.length; i++) {
            const s = starts[i]!;
            expect(s).toBeLessThanOrEqual(ts);
            expect(ts).toBeLessThan(s + size);
            expect(mod(s - offset, slide)).toBe(0);
            if (i > 0) expect(s).toBe(starts[i - 1]! - slide);
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('assigner definitions', () => {
  it('records kind, size, slide, gap and offset (default 0)', () => {
    expect(tumbling({ size: 60_000 })).toEqual({ kind: 'tumbling', size: 60_000, offset: 0 });
    expect(tumbling({ size: 60_000, offset: -59_999 })).toEqual({
      kind: 'tumbling',
      size: 60_000,
      offset: -59_999,
    });
    expect(sliding({ size: 10, slide: 5, offset: 4 })).toEqual({
      kind: 'sliding',
      size: 10,
      slide: 5,
      offset: 4,
    });
    expect(session({ gap: 30_000 })).toEqual({ kind: 'session', gap: 30_000 });
  });

  it.each([
    ['zero', 0, 'received 0'],
    ['negative', -5, 'received -5'],
    ['fractional', 1.5, 'received 1.5'],
    ['NaN', Number.NaN, 'received NaN'],
    ['infinite', Number.POSITIVE_INFINITY, 'received Infinity'],
    ['a string', '10', 'received "10"'],
  ])('rejects a %s tumbling size', (_what, size, received) => {
    const error = definitionError(() => tumbling({ size: size as number }));
    expect(error.message).toContain(
      'tumbling window size must be a whole number of milliseconds from 1 to 100000000000000 (about 3,170 years)',
    );
    expect(error.message).toContain(received);
    expect(error.code).toBe('PIPELINE_DEFINITION');
    expect(error.retryable).toBe(false);
  });

  it('rejects tumbling offsets with |offset| >= size or not whole', () => {
    for (const offset of [10, -10, 11, -25]) {
      const error = definitionError(() => tumbling({ size: 10, offset }));
      expect(error.message).toContain('tumbling window offset');
      expect(error.message).toContain('|offset| < 10');
      expect(error.message).toContain(`received ${offset}`);
    }
    expect(definitionError(() => tumbling({ size: 10, offset: 0.5 })).message).toContain('received 0.5');
    expect(tumbling({ size: 10, offset: 9 }).offset).toBe(9);
    expect(tumbling({ size: 10, offset: -9 }).offset).toBe(-9);
  });

  it('rejects invalid sliding sizes and slides', () => {
    expect(definitionError(() => sliding({ size: 0, slide: 5 })).message).toContain(
      'sliding window size must be a whole number of milliseconds from 1 to 100000000000000 (about 3,170 years); received 0',
    );
    expect(definitionError(() => sliding({ size: 10, slide: 0 })).message).toContain(
      'sliding window slide must be a whole number of milliseconds from 1 to 100000000000000 (about 3,170 years); received 0',
    );
    expect(definitionError(() => sliding({ size: 10, slide: -5 })).message).toContain('received -5');
  });

  it('bounds the windows per element as Flink does (size / slide <= 10,000,000)', () => {
    expect(sliding({ size: 10_000_000, slide: 1 }).size).toBe(10_000_000);
    expect(sliding({ size: 20_000_001, slide: 2 }).size).toBe(20_000_001); // floor(size / slide), as Flink's long division
    expect(definitionError(() => sliding({ size: 10_000_001, slide: 1 })).message).toBe(
      'sliding windows need size / slide <= 10000000 (each element is added to size / slide windows); received size 10000001 and slide 1. Check the units: sliding({ size: hours(1), slide: minutes(1) })',
    );
    // A slide in the wrong unit: one element would be added to 10^14 windows.
    expect(() => sliding({ size: 1e14, slide: 1 })).toThrow(/size \/ slide <= 10000000/);
  });

  it('checks a sliding offset against the slide (Flink: abs(offset) < slide)', () => {
    const error = definitionError(() => sliding({ size: 10, slide: 5, offset: 5 }));
    expect(error.message).toContain('sliding window offset');
    expect(error.message).toContain('|offset| < 5');
    expect(error.message).toContain('received 5');
    expect(definitionError(() => sliding({ size: 10, slide: 5, offset: -7 })).message).toContain(
      'received -7',
    );
    expect(sliding({ size: 10, slide: 5, offset: -4 }).offset).toBe(-4);
  });

  it('rejects a non-positive or fractional session gap', () => {
    for (const gap of [0, -1, 2.5]) {
      const error = definitionError(() => session({ gap }));
      expect(error.message).toContain(
        'session gap must be a whole number of milliseconds from 1 to 100000000000000 (about 3,170 years)',
      );
      expect(error.message).toContain(`received ${gap}`);
    }
  });
});

describe('windowing DSL validation', () => {
  interface Ev {
    readonly k: string;
    readonly ts: number;
  }
  const keyed = () =>
    pipeline('validation')
      .source<Ev>()
      .withTimestamps((e) => e.ts, boundedOutOfOrderness(0))
      .keyBy((e) => e.k);

  it('window() needs an assigner', () => {
    const error = definitionError(() => keyed().window(undefined as never));
    expect(error.message).toContain('window needs tumbling(...), sliding(...) or session(...)');
    expect(error.message).toContain('received undefined');
    expect(definitionError(() => keyed().window({ kind: 'hopping' } as never)).message).toContain(
      'received {"kind":"hopping"}',
    );
  });

  it('allowedLateness must be a whole number of milliseconds from 0 to 100000000000000 (about 3,170 years)', () => {
    for (const lateness of [-1, 0.5, Number.NaN]) {
      const error = definitionError(() =>
        keyed()
          .window(tumbling({ size: 10 }))
          .allowedLateness(lateness),
      );
      expect(error.message).toContain(
        'allowedLateness must be a whole number of milliseconds from 0 to 100000000000000 (about 3,170 years)',
      );
    }
    expect(() =>
      keyed()
        .window(tumbling({ size: 10 }))
        .allowedLateness(0),
    ).not.toThrow();
  });

  it('sideOutputLateData and uid need a non-empty name', () => {
    expect(
      definitionError(() =>
        keyed()
          .window(tumbling({ size: 10 }))
          .sideOutputLateData(''),
      ).message,
    ).toContain('sideOutputLateData needs a non-empty name');
    expect(
      definitionError(() =>
        keyed()
          .window(tumbling({ size: 10 }))
          .uid(''),
      ).message,
    ).toContain('uid needs a non-empty name');
  });

  it('session windows need an aggregate with merge', () => {
    const noMerge = { create: () => 0, add: (_e: Ev, acc: number) => acc + 1, result: (acc: number) => acc };
    const error = definitionError(() =>
      keyed()
        .window(session({ gap: 10 }))
        .aggregate(noMerge),
    );
    expect(error.message).toContain('session windows merge, so their aggregate needs a merge(a, b) function');
    // Aligned windows do not merge, so merge is optional there.
    expect(() =>
      keyed()
        .window(tumbling({ size: 10 }))
        .aggregate(noMerge),
    ).not.toThrow();
    expect(() =>
      keyed()
        .window(session({ gap: 10 }))
        .aggregate(count()),
    ).not.toThrow();
    expect(() =>
      keyed()
        .window(session({ gap: 10 }))
        .reduce((a) => a),
    ).not.toThrow();
  });

  it('aggregate and reduce need functions', () => {
    expect(
      definitionError(() =>
        keyed()
          .window(tumbling({ size: 10 }))
          .aggregate({} as never),
      ).message,
    ).toContain('aggregate needs {create, add, merge?, result}');
    expect(
      definitionError(() =>
        keyed()
          .window(tumbling({ size: 10 }))
          .reduce(undefined as never),
      ).message,
    ).toContain('reduce needs a function');
    expect(
      definitionError(() =>
        keyed()
          .window(tumbling({ size: 10 }))
          .aggregate(collect(), 42 as never),
      ).message,
    ).toContain('aggregate window function needs a function');
  });

  it('windows need event time: compile rejects a window without withTimestamps', () => {
    const p = pipeline('no-time');
    p.source<Ev>()
      .keyBy((e) => e.k)
      .window(tumbling({ size: 10 }))
      .aggregate(count())
      .sink('out');
    expect(definitionError(() => compile(p)).message).toContain('windows need event time');
  });

  it('lateData() is only available on a window result', () => {
    const processed = keyed().process({ processElement: () => {} });
    // @ts-expect-error a process function has no late data (the compiler says so too)
    expect(definitionError(() => processed.lateData()).message).toContain(
      'lateData() is only available on the result of a window aggregation',
    );
  });

  it('watermark strategies validate their durations', () => {
    expect(definitionError(() => boundedOutOfOrderness(-1)).message).toContain(
      'boundedOutOfOrderness bound must be a whole number of milliseconds from 0 to 100000000000000 (about 3,170 years); received -1',
    );
    expect(definitionError(() => withIdleness(monotonic(), 0)).message).toContain(
      'withIdleness timeout must be a whole number of milliseconds from 1 to 100000000000000 (about 3,170 years); received 0',
    );
    expect(boundedOutOfOrderness(5)).toEqual({ bound: 5, idleTimeout: undefined });
    expect(monotonic()).toEqual({ bound: 0, idleTimeout: undefined });
    expect(withIdleness(boundedOutOfOrderness(5), 1000)).toEqual({ bound: 5, idleTimeout: 1000 });
  });
});
