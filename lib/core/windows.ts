/** Window assigners with Flink's exact semantics: [start, end), end exclusive. */
import { describeValue, PipelineDefinitionError } from './errors.ts';
import { checkDuration, type Millis } from './time.ts';

export interface TimeWindow {
  readonly start: number;
  readonly end: number;
}

/** Flink's TimeWindow.maxTimestamp: the last millisecond inside the window. */
export const maxTimestamp = (w: TimeWindow): number => w.end - 1;

/** Flink's TimeWindow.getWindowStartWithOffset, correct for negative timestamps. */
export function windowStart(timestamp: number, offset: number, size: number): number {
  const remainder = (timestamp - offset) % size;
  return remainder < 0 ? timestamp - (remainder + size) : timestamp - remainder;
}

export interface TumblingWindows {
  readonly kind: 'tumbling';
  readonly size: Millis;
  readonly offset: Millis;
}
export interface SlidingWindows {
  readonly kind: 'sliding';
  readonly size: Millis;
  readonly slide: Millis;
  readonly offset: Millis;
}
export interface SessionWindows {
  readonly kind: 'session';
  readonly gap: Millis;
}
export type WindowAssigner = TumblingWindows | SlidingWindows | SessionWindows;

function checkOffset(offset: unknown, size: number, what: string): number {
  if (typeof offset !== 'number' || !Number.isInteger(offset) || Math.abs(offset) >= size) {
    throw new PipelineDefinitionError(
      `${what} offset must be a whole number of milliseconds with |offset| < ${size}; received ${describeValue(offset)}`,
    );
  }
  return offset;
}

/**
 * The options object of an assigner call, or an error showing the call to write. A field it
 * does not know (a misspelt `ofset`) is refused: it would be ignored without a word. `kind` is
 * accepted, for an assigner object passed to window() again.
 */
function checkOptions<T>(options: T, call: string, example: string, fields: readonly string[]): T {
  if (typeof options !== 'object' || options === null) {
    throw new PipelineDefinitionError(
      `${call} needs an options object, e.g. ${example}; received ${describeValue(options)}`,
    );
  }
  const unknown = Object.keys(options).filter((f) => f !== 'kind' && !fields.includes(f));
  if (unknown.length > 0) {
    throw new PipelineDefinitionError(
      `${call} options have unknown field${unknown.length > 1 ? 's' : ''} ${unknown.map((f) => `"${f}"`).join(', ')} (misspelt?); ${call} takes ${fields.map((f) => `"${f}"`).join(', ')}`,
    );
  }
  return options;
}

/** Fixed-size, non-overlapping windows: [k*size + offset, (k+1)*size + offset). */
export function tumbling(options: { size: Millis; offset?: Millis }): TumblingWindows {
  checkOptions(options, 'tumbling', 'tumbling({ size: minutes(1) })', ['size', 'offset']);
  const size = checkDuration('tumbling window size', options.size, 1);
  return { kind: 'tumbling', size, offset: checkOffset(options.offset ?? 0, size, 'tumbling window') };
}

/** The most windows a sliding-window element may be added to, as Flink's MAX_WINDOW_NUM. */
export const MAX_WINDOWS_PER_ELEMENT = 10_000_000;

/** Windows of `size` starting every `slide`; an element belongs to ceil(size/slide) windows. */
export function sliding(options: { size: Millis; slide: Millis; offset?: Millis }): SlidingWindows {
  checkOptions(options, 'sliding', 'sliding({ size: minutes(10), slide: minutes(1) })', [
    'size',
    'slide',
    'offset',
  ]);
  const size = checkDuration('sliding window size', options.size, 1);
  const slide = checkDuration('sliding window slide', options.slide, 1);
  // Flink's bound (SlidingEventTimeWindows, since 2.1): each element is added to size/slide windows.
  if (Math.floor(size / slide) > MAX_WINDOWS_PER_ELEMENT) {
    throw new PipelineDefinitionError(
      `sliding windows need size / slide <= ${MAX_WINDOWS_PER_ELEMENT} (each element is added to size / slide windows); received size ${size} and slide ${slide}. Check the units: sliding({ size: hours(1), slide: minutes(1) })`,
    );
  }
  return { kind: 'sliding', size, slide, offset: checkOffset(options.offset ?? 0, slide, 'sliding window') };
}

/** Per-key sessions: an element opens [ts, ts+gap); windows that overlap or touch merge. */
export function session(options: { gap: Millis }): SessionWindows {
  checkOptions(options, 'session', 'session({ gap: minutes(30) })', ['gap']);
  return { kind: 'session', gap: checkDuration('session gap', options.gap, 1) };
}

/** The window starts an element at `timestamp` belongs to, latest first (Flink's order). */
export function assignAlignedStarts(assigner: TumblingWindows | SlidingWindows, timestamp: number): number[] {
  if (assigner.kind === 'tumbling') return [windowStart(timestamp, assigner.offset, assigner.size)];
  const starts: number[] = [];
  const last = windowStart(timestamp, assigner.offset, assigner.slide);
  for (let start = last; start > timestamp - assigner.size; start -= assigner.slide) starts.push(start);
  return starts;
}
