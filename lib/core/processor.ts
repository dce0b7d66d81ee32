/**
 * The public Processor API: a keyed process function with keyed state and namespaced timers.
 * The DSL's window operators are built on it, as Flink's WindowOperator is on its internal
 * timer service and keyed state.
 */
import type { TimeDomain, TimerNamespace } from './checkpoint.ts';
import type { StateHandles, StateKey, StateSpec } from './state.ts';

declare const outputType: unique symbol;

/**
 * A side output's name, typed by its elements (Flink's OutputTag): made by `outputTag<V>(name)`,
 * it makes `ctx.output(tag, value)` take only a V and `sideOutput(tag)` a `DataStream<V>`. At run
 * time it is the name itself, so a plain string is a tag of unknown elements.
 */
export type OutputTag<V> = string & { readonly [outputType]?: V };

export interface Timer {
  readonly time: number;
  readonly domain: TimeDomain;
  /** '' unless registered with a namespace (window operators use the window start). */
  readonly namespace: TimerNamespace;
}

/** Timers of the current key. Registering an existing (time, namespace) timer is a no-op. */
export interface TimerService {
  registerEventTimeTimer(time: number, namespace?: TimerNamespace): void;
  deleteEventTimeTimer(time: number, namespace?: TimerNamespace): void;
  registerProcessingTimeTimer(time: number, namespace?: TimerNamespace): void;
  deleteProcessingTimeTimer(time: number, namespace?: TimerNamespace): void;
}

export interface ProcessContext<Out, S extends StateSpec = StateSpec, K extends StateKey = StateKey> {
  /** The key being processed: what the stream's keyBy selector returned. */
  readonly key: K;
  /** The element's timestamp, or the timer's time inside onTimer. */
  readonly timestamp: number;
  readonly currentWatermark: number;
  readonly currentProcessingTime: number;
  readonly state: StateHandles<S>;
  readonly timers: TimerService;
  /**
   * Emits downstream; the timestamp defaults to the context timestamp. Nothing reads it yet: only
   * stateless steps and sinks can follow a keyed operator (no repartitioning).
   */
  emit(value: Out, timestamp?: number): void;
  /**
   * Emits to a named side output (a sink of that name unless the side output is consumed). With
   * a tag made by `outputTag<V>(name)` the value must be a V; with a plain name, any value.
   */
  output<V = unknown>(sideOutput: OutputTag<V>, value: NoInfer<V>): void;
}

/**
 * `processElement` and `onTimer` are function-typed properties rather than methods so that their
 * parameters are checked strictly: a function written for elements with more fields than the
 * stream's (or for another key type) does not type-check where it is used (method parameters
 * would be compared bivariantly).
 */
export interface KeyedProcessFunction<
  In,
  Out,
  S extends StateSpec = StateSpec,
  K extends StateKey = StateKey,
> {
  /** State declared up front, by name; names are the stored format (keep them stable). */
  readonly state?: S;
  processElement: (value: In, ctx: ProcessContext<Out, S, K>) => void;
  onTimer?: (timer: Timer, ctx: ProcessContext<Out, S, K>) => void;
}

/**
 * @internal Thrown by onTimer when its state and timer changes are complete and only its output
 * failed (a window function that threw). The task dead-letters the timer as for any failure,
 * but keeps those changes instead of rolling them back: a window whose firing failed is still
 * cleaned up, and its early firings go on.
 */
export class TimerOutputError extends Error {
  constructor(readonly error: unknown) {
    super(error instanceof Error ? error.message : String(error));
    this.name = 'TimerOutputError';
  }
}

/**
 * Types a process function by its input and output (and optionally its key) while inferring its
 * state: `processFunction<Click, Alert>()({ state: { n: valueState<number>() }, processElement(...) {...} })`.
 * (TypeScript cannot infer the state type when the output type is given explicitly.) With a key
 * type, `processFunction<Click, Alert, string>()`, `ctx.key` is a string and the function can
 * only be used on a stream keyed by strings.
 */
export function processFunction<In, Out, K extends StateKey = StateKey>(): <S extends StateSpec>(
  fn: KeyedProcessFunction<In, Out, S, K>,
) => KeyedProcessFunction<In, Out, S, K> {
  return (fn) => fn;
}
