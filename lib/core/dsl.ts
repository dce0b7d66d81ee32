/**
 * The typed fluent DSL. Building a pipeline only records a graph; `compile` validates it and
 * the ShardTask turns it into push-based operators over the Processor API.
 */
import { type AggregateFunction, reducing } from './aggregates.ts';
import { describeValue, PipelineDefinitionError, SYNCHRONOUS_FUNCTIONS } from './errors.ts';
import type { SourceRecord } from './ports.ts';
import type { KeyedProcessFunction, OutputTag } from './processor.ts';
import { listState, mapState, type StateKey, type StateSpec, valueState } from './state.ts';
import { checkDuration, type Millis } from './time.ts';
import type { WatermarkStrategy } from './watermarks.ts';
import {
  alignedWindowOperator,
  sessionWindowOperator,
  type WindowFunction,
  type WindowResult,
} from './window-operator.ts';
import { session, sliding, tumbling, type WindowAssigner } from './windows.ts';

/** Sink receiving records that could not be processed, with the reason and position. */
export const DEAD_LETTER_SINK = 'floe.dead-letter';
/** Default name of a window's late-data side output (and of the sink it goes to). */
export const DEFAULT_LATE_SINK = 'floe.late';
/** Sink and side-output names starting with this are floe's own (dead letters, late data). */
export const RESERVED_SINK_PREFIX = 'floe.';

/**
 * @internal Why `name` cannot be given to `call` (a sink or side-output name starting with
 * "floe."), or undefined when it can. Used by the DSL calls and again by `compile`.
 */
export function reservedSinkName(call: string, name: string): string | undefined {
  if (!name.startsWith(RESERVED_SINK_PREFIX)) return undefined;
  const what =
    name === DEAD_LETTER_SINK
      ? 'reserved for dead letters (records floe could not process)'
      : name === DEFAULT_LATE_SINK
        ? "reserved for the late data of windows that do not name their own late output (consume it with the window result's lateData())"
        : `reserved: names starting with "${RESERVED_SINK_PREFIX}" are floe's own (${DEAD_LETTER_SINK}, ${DEFAULT_LATE_SINK})`;
  return `${call}: the name "${name}" is ${what}; choose a name that does not start with "${RESERVED_SINK_PREFIX}"`;
}

/**
 * @internal Why `name` cannot be given to `call` because a sink binding could not address it
 * (`name=destination`: the name ends at the first "=", is trimmed, and "*" binds every other
 * sink), or undefined when it can. Used by the DSL calls, `compile` and `ctx.output`.
 */
export function unbindableSinkName(call: string, name: string): string | undefined {
  if (name === '*')
    return `${call}: the name "*" stands for every other sink in sink bindings; choose another name`;
  if (name.includes('=')) {
    return `${call}: the name "${name}" contains "=", which ends a sink's name in a sink binding (name=destination); choose a name without "="`;
  }
  if (name.trim() !== name) {
    return `${call}: the name ${JSON.stringify(name)} starts or ends with white space, which sink bindings trim; choose a name without it`;
  }
  return undefined;
}

export type Deserializer<T> = (data: unknown, record: SourceRecord) => T;

const decoder = new TextDecoder('utf-8', { fatal: true });

/** JSON from bytes or a string (the default). */
export function jsonDeserializer<T>(): Deserializer<T> {
  return (data) => {
    if (data instanceof Uint8Array) return JSON.parse(decoder.decode(data)) as T;
    if (typeof data === 'string') return JSON.parse(data) as T;
    throw new TypeError(
      `expected the record data as bytes or a JSON string; received ${describeValue(data)}`,
    );
  };
}

/** Uses the record data as it is (already-decoded values, e.g. in tests and benchmarks). */
export function passthroughDeserializer<T>(): Deserializer<T> {
  return (data) => data as T;
}

export type NodeKind =
  | 'source'
  | 'map'
  | 'filter'
  | 'flatMap'
  | 'timestamps'
  | 'keyed'
  | 'sideOutput'
  | 'sink';

export interface GraphNode {
  readonly id: number;
  readonly kind: NodeKind;
  readonly input: GraphNode | undefined;
  // biome-ignore lint/suspicious/noExplicitAny: heterogeneous node payloads are checked by kind
  readonly fn?: (...args: any[]) => any;
  readonly name?: string;
  readonly strategy?: WatermarkStrategy;
  readonly deserializer?: Deserializer<unknown>;
  readonly keySelector?: (value: unknown) => StateKey;
  readonly process?: KeyedProcessFunction<unknown, unknown, StateSpec>;
  /** Explicit operator uid (stable state address); derived when absent. */
  uid?: string;
  readonly operatorKind?: 'window' | 'process';
  /** Window operators: name of the late-data side output. */
  readonly lateOutput?: string;
  /** Window operators: the assigner kind (its state layout; recorded in savepoints). */
  readonly windowKind?: WindowAssigner['kind'];
  /** Tumbling and sliding window operators: the window size (open windows are stored by start). */
  readonly windowSize?: number;
}

export interface PipelineOptions {
  /** Identifies the pipeline code in checkpoints and savepoints. @default '1' */
  readonly version?: string;
}

export class Pipeline {
  readonly nodes: GraphNode[] = [];
  readonly version: string;

  constructor(
    readonly name: string,
    options: PipelineOptions = {},
  ) {
    if (typeof name !== 'string' || !/^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$/.test(name)) {
      throw new PipelineDefinitionError(
        `pipeline name must be 1-100 letters, digits, '.', '_' or '-' starting with a letter or digit; received ${describeValue(name)}`,
      );
    }
    if (typeof options !== 'object' || options === null) {
      throw new PipelineDefinitionError(
        `pipeline "${name}": options must be an object such as { version: '2' } or left out; received ${describeValue(options)}`,
      );
    }
    // Savepoints record the version as a string; another value would make them unreadable.
    if (options.version !== undefined && (typeof options.version !== 'string' || options.version === '')) {
      throw new PipelineDefinitionError(
        `pipeline "${name}": version must be a non-empty string, e.g. { version: '2' }; received ${describeValue(options.version)}`,
      );
    }
    this.version = options.version ?? '1';
  }

  /** The pipeline's single source: the records of the job's stream. */
  source<T>(options: { deserializer?: Deserializer<T> } = {}): DataStream<T> {
    if (this.nodes.some((n) => n.kind === 'source')) {
      throw new PipelineDefinitionError(
        `pipeline "${this.name}" already has a source; a pipeline reads one stream. Reuse the DataStream returned by the first source() call to branch.`,
      );
    }
    if (typeof options !== 'object' || options === null) {
      throw new PipelineDefinitionError(
        `source options must be an object such as { deserializer } or left out; received ${describeValue(options)}`,
      );
    }
    if (options.deserializer !== undefined) requireFunction('source deserializer', options.deserializer);
    const node = this.add({
      kind: 'source',
      input: undefined,
      deserializer: (options.deserializer ?? jsonDeserializer<T>()) as Deserializer<unknown>,
    });
    return new DataStream<T>(this, node);
  }

  /** @internal */
  add(node: Omit<GraphNode, 'id'>): GraphNode {
    const full = { ...node, id: this.nodes.length } as GraphNode;
    this.nodes.push(full);
    return full;
  }
}

/** Starts a pipeline definition. Export it as the module's default export. */
export function pipeline(name: string, options?: PipelineOptions): Pipeline {
  return new Pipeline(name, options);
}

function requireFunction(what: string, fn: unknown): void {
  if (typeof fn !== 'function') {
    throw new PipelineDefinitionError(`${what} needs a function; received ${describeValue(fn)}`);
  }
  refuseAsync(what, fn);
}

/**
 * An async function's work would run after floe has committed the record it was called for
 * (its result, a Promise, is all floe sees), so it is refused when the pipeline is built.
 * Plain functions that return a Promise are caught per record (shard-task.ts).
 */
function refuseAsync(what: string, fn: unknown): void {
  const tag = Object.prototype.toString.call(fn);
  if (tag === '[object AsyncFunction]' || tag === '[object AsyncGeneratorFunction]') {
    throw new PipelineDefinitionError(
      `${what} needs a synchronous function; received an async function. ${SYNCHRONOUS_FUNCTIONS}.`,
    );
  }
}

function requireName(what: string, name: unknown): string {
  if (typeof name !== 'string' || name.length === 0 || name.length > 200) {
    throw new PipelineDefinitionError(`${what} needs a non-empty name; received ${describeValue(name)}`);
  }
  return name;
}

/**
 * A sink or side-output name the user may choose: not one of floe's own ("floe.…"), and one a
 * sink binding can address.
 */
function requireSinkName(call: string, name: unknown): string {
  const checked = requireName(call, name);
  const problem = reservedSinkName(call, checked) ?? unbindableSinkName(call, checked);
  if (problem !== undefined) throw new PipelineDefinitionError(problem);
  return checked;
}

/**
 * A typed side-output name for `ctx.output(tag, value)` and `sideOutput(tag)`: the compiler then
 * checks that what a process function sends to it and what reads it agree. The name is checked as
 * `sideOutput(name)` checks it (not "floe.…", addressable by a sink binding).
 */
export function outputTag<V>(name: string): OutputTag<V> {
  return requireSinkName('outputTag', name);
}

const AGGREGATE_MEMBERS = [
  ['create', 'create() returning a new accumulator'],
  ['add', 'add(value, accumulator) returning the updated accumulator'],
  ['merge', 'merge(a, b) combining two accumulators (optional; session windows need it)'],
  ['result', "result(accumulator) returning the window's result"],
] as const;

/**
 * Checks an AggregateFunction when the pipeline is built: create, add and result are functions,
 * merge is a function or absent (otherwise every record would be dead-lettered at run time).
 */
function checkAggregate(call: string, aggregate: unknown): void {
  const fix =
    'Use a built-in such as count(), sum((e) => e.amount) or collect(), or an object with these functions';
  if (typeof aggregate === 'function') {
    throw new PipelineDefinitionError(
      `${call} needs an AggregateFunction {create, add, merge?, result}; received a function (write count(), not count). ${fix}.`,
    );
  }
  if (typeof aggregate !== 'object' || aggregate === null) {
    throw new PipelineDefinitionError(
      `${call} needs an AggregateFunction {create, add, merge?, result}; received ${describeValue(aggregate)}. ${fix}.`,
    );
  }
  const members = aggregate as Record<string, unknown>;
  for (const [member, meaning] of AGGREGATE_MEMBERS) {
    const value = members[member];
    if (typeof value === 'function') {
      refuseAsync(`${call}'s ${member}`, value);
      continue;
    }
    if (member === 'merge' && value === undefined) continue;
    const received = AGGREGATE_MEMBERS.filter(([m]) => m !== 'merge' || members[m] !== undefined)
      .map(([m]) => `${m}: ${describeValue(members[m])}`)
      .join(', ');
    throw new PipelineDefinitionError(
      `${call} needs {create, add, merge?, result}: ${member} must be a function, ${meaning}; received {${received}}. ${fix}${member === 'merge' ? ', or leave merge out' : ''}.`,
    );
  }
}

/** A process function's `state`: each entry made by valueState(), mapState() or listState(). */
function checkStateSpec(spec: unknown): void {
  if (spec === undefined) return;
  if (typeof spec !== 'object' || spec === null || Array.isArray(spec)) {
    throw new PipelineDefinitionError(
      `process: state must be an object of named state descriptors, e.g. { count: valueState<number>() }; received ${describeValue(spec)}`,
    );
  }
  for (const [name, descriptor] of Object.entries(spec)) {
    if (name === '__proto__') {
      // Assigned to a plain object, the name would set its prototype instead of a property.
      throw new PipelineDefinitionError('process: "__proto__" cannot name a state; choose another name');
    }
    const kind = (descriptor as { kind?: unknown } | null)?.kind;
    if (kind !== 'value' && kind !== 'map' && kind !== 'list') {
      const hint = typeof descriptor === 'function' ? ' (call it: valueState(), not valueState)' : '';
      throw new PipelineDefinitionError(
        `process: state "${name}" must be valueState(), mapState() or listState(); received ${describeValue(descriptor)}${hint}`,
      );
    }
    checkDescriptor(name, kind, descriptor as Record<string, unknown>);
  }
}

/**
 * A descriptor written by hand ({ kind: 'value', ttl }) gets the checks of the function that
 * makes it (valueState, mapState, listState): a ttl of 0 would otherwise expire every write.
 */
function checkDescriptor(name: string, kind: 'value' | 'map' | 'list', d: Record<string, unknown>): void {
  const fields = kind === 'map' ? ['kind', 'ttl', 'layout'] : ['kind', 'ttl'];
  const unknown = Object.keys(d).filter((f) => !fields.includes(f));
  if (unknown.length > 0) {
    throw new PipelineDefinitionError(
      `process: state "${name}" (${kind} state) has unknown option${unknown.length > 1 ? 's' : ''} ${unknown.map((f) => `"${f}"`).join(', ')}; its options are ${fields.slice(1).join(' and ')}`,
    );
  }
  const options = { ttl: d.ttl as number | undefined, layout: d.layout as 'per-key' | undefined };
  try {
    if (kind === 'value') valueState(options);
    else if (kind === 'list') listState(options);
    else mapState(options);
  } catch (error) {
    if (!(error instanceof PipelineDefinitionError)) throw error;
    throw new PipelineDefinitionError(`process: state "${name}": ${error.message}`);
  }
}

function requireUid(uid: unknown): string {
  const name = requireName('uid', uid);
  // floe's own keyed entries (timer chunks) use uids in this namespace.
  if (name.startsWith('floe.')) {
    throw new PipelineDefinitionError(
      `operator uid "${name}" is reserved: uids starting with "floe." are floe's own; choose another uid`,
    );
  }
  return name;
}

/** The nearest keyed operator upstream of `node` (inclusive), if any. */
function keyedUpstream(node: GraphNode): GraphNode | undefined {
  for (let n: GraphNode | undefined = node; n !== undefined; n = n.input) if (n.kind === 'keyed') return n;
  return undefined;
}

export class DataStream<T> {
  constructor(
    readonly pipeline: Pipeline,
    /** @internal */ readonly node: GraphNode,
  ) {}

  map<U>(fn: (value: T) => U): DataStream<U> {
    requireFunction('map', fn);
    return new DataStream<U>(this.pipeline, this.pipeline.add({ kind: 'map', input: this.node, fn }));
  }

  // The type guard first: a guard is also a (value: T) => boolean, so the other overload would
  // take it and lose the narrowing.
  filter<S extends T>(predicate: (value: T) => value is S): DataStream<S>;
  filter(predicate: (value: T) => boolean): DataStream<T>;
  filter(predicate: (value: T) => boolean): DataStream<T> {
    requireFunction('filter', predicate);
    return new DataStream<T>(
      this.pipeline,
      this.pipeline.add({ kind: 'filter', input: this.node, fn: predicate }),
    );
  }

  flatMap<U>(fn: (value: T) => Iterable<U>): DataStream<U> {
    requireFunction('flatMap', fn);
    return new DataStream<U>(this.pipeline, this.pipeline.add({ kind: 'flatMap', input: this.node, fn }));
  }

  /**
   * Assigns event time and generates watermarks (Flink's assignTimestampsAndWatermarks).
   * A record whose timestamp is not a number within ±8.64e15 ms (a Date's range) goes to the
   * dead-letter sink; timestamps are rounded down to whole milliseconds.
   */
  withTimestamps(timestamp: (value: T) => number, watermarks: WatermarkStrategy): DataStream<T> {
    const keyed = keyedUpstream(this.node);
    if (keyed !== undefined) {
      throw new PipelineDefinitionError(
        `pipeline "${this.pipeline.name}": withTimestamps is called on the output of a ${keyed.operatorKind} operator; it comes once per pipeline, before keyBy (the watermark is per shard and the keyed operators run on its event time). Call withTimestamps(...) on the stream before keyBy(...).`,
      );
    }
    requireFunction('withTimestamps', timestamp);
    if (typeof watermarks !== 'object' || watermarks === null || typeof watermarks.bound !== 'number') {
      throw new PipelineDefinitionError(
        `withTimestamps needs a watermark strategy such as boundedOutOfOrderness(seconds(5)); received ${describeValue(watermarks)}`,
      );
    }
    return new DataStream<T>(
      this.pipeline,
      this.pipeline.add({ kind: 'timestamps', input: this.node, fn: timestamp, strategy: watermarks }),
    );
  }

  /**
   * Partitions by key. On AWS every event of a key must arrive on one Kinesis shard: key by
   * (a function of) the partition key. See docs/dsl.md, "Keys and shards".
   */
  keyBy<K extends StateKey>(key: (value: T) => K): KeyedStream<T, K> {
    requireFunction('keyBy', key);
    return new KeyedStream<T, K>(this, key);
  }

  /** Writes every element to the named sink. */
  sink(name: string): void {
    this.pipeline.add({ kind: 'sink', input: this.node, name: requireSinkName('sink', name) });
  }
}

export class KeyedStream<T, K extends StateKey> {
  /**
   * @internal The key selector. Typed without its element type, which as a parameter type would
   * make streams invariant (a stream of a subtype would not be a stream of its supertype).
   */
  readonly key: (value: never) => K;

  constructor(
    /** @internal */ readonly stream: DataStream<T>,
    key: (value: T) => K,
  ) {
    this.key = key;
  }

  window(assigner: WindowAssigner): WindowedStream<T, K> {
    if (
      typeof assigner !== 'object' ||
      assigner === null ||
      !['tumbling', 'sliding', 'session'].includes(assigner.kind)
    ) {
      throw new PipelineDefinitionError(
        `window needs tumbling(...), sliding(...) or session(...); received ${describeValue(assigner)}`,
      );
    }
    // Checked again (an object written by hand, e.g. without its offset, would assign no window).
    const checked =
      assigner.kind === 'tumbling'
        ? tumbling(assigner)
        : assigner.kind === 'sliding'
          ? sliding(assigner)
          : session(assigner);
    return new WindowedStream<T, K>(this, checked);
  }

  /** A keyed process function with state and timers (see KeyedProcessFunction). */
  process<Out, S extends StateSpec = StateSpec>(
    fn: KeyedProcessFunction<T, Out, S, K>,
    options: { uid?: string } = {},
  ): ProcessedStream<Out, never> {
    if (typeof fn !== 'object' || fn === null || typeof fn.processElement !== 'function') {
      throw new PipelineDefinitionError(
        `process needs an object with a processElement(value, ctx) method; received ${describeValue(fn)}`,
      );
    }
    refuseAsync('process: processElement', fn.processElement);
    if (typeof options !== 'object' || options === null) {
      throw new PipelineDefinitionError(
        `process options must be an object such as { uid: 'my-operator' } or left out; received ${describeValue(options)}`,
      );
    }
    checkStateSpec(fn.state);
    if (fn.onTimer !== undefined) {
      if (typeof fn.onTimer !== 'function') {
        throw new PipelineDefinitionError(
          `process: onTimer must be a method onTimer(timer, ctx) or left out; received ${describeValue(fn.onTimer)}`,
        );
      }
      refuseAsync('process: onTimer', fn.onTimer);
    }
    return this.addOperator<Out, never>(
      'process',
      fn as unknown as KeyedProcessFunction<unknown, unknown, StateSpec>,
      options.uid === undefined ? undefined : requireUid(options.uid),
    );
  }

  /** @internal */
  addOperator<Out, Late>(
    operatorKind: 'window' | 'process',
    process: KeyedProcessFunction<unknown, unknown, StateSpec>,
    uid: string | undefined,
    lateOutput?: string,
    windowKind?: WindowAssigner['kind'],
    windowSize?: number,
  ): ProcessedStream<Out, Late> {
    const pipeline = this.stream.pipeline;
    const node = pipeline.add({
      kind: 'keyed',
      input: this.stream.node,
      keySelector: this.key as unknown as (value: unknown) => StateKey,
      process,
      operatorKind,
      uid,
      lateOutput,
      windowKind,
      windowSize,
    });
    return new ProcessedStream<Out, Late>(pipeline, node);
  }
}

export class WindowedStream<T, K extends StateKey> {
  private lateness = 0;
  private early: Millis | undefined;
  private lateName = DEFAULT_LATE_SINK;
  private uidValue: string | undefined;

  constructor(
    private readonly keyed: KeyedStream<T, K>,
    private readonly assigner: WindowAssigner,
  ) {}

  /** Keeps windows for `lateness` ms past their end; late elements re-fire them. @default 0 */
  allowedLateness(lateness: Millis): this {
    this.lateness = checkDuration('allowedLateness', lateness, 0);
    return this;
  }

  /**
   * Also fires each window every `interval` ms of event time before its end, with its contents
   * so far (results carry `early: true`): when the watermark reaches start + k·interval − 1.
   * The end firing and late firings are unchanged. Like Flink's ContinuousEventTimeTrigger, but
   * aligned to the window start and firing once per watermark advance (docs/dsl.md).
   * Tumbling and sliding windows only. @default no early firings
   */
  earlyFiring(interval: Millis): this {
    checkDuration('earlyFiring interval', interval, 1);
    if (this.assigner.kind === 'session') {
      throw new PipelineDefinitionError(
        'earlyFiring is supported for tumbling and sliding windows only (session windows merge, so their end is not known in advance)',
      );
    }
    if (interval >= this.assigner.size) {
      throw new PipelineDefinitionError(
        `earlyFiring interval (${interval} ms) must be shorter than the window (${this.assigner.size} ms), or no early firing would happen`,
      );
    }
    this.early = interval;
    return this;
  }

  /**
   * Names the side output (and default sink) for elements too late for every window. Names
   * starting with "floe." are reserved (only the default itself is accepted). @default 'floe.late'
   */
  sideOutputLateData(name: string): this {
    this.lateName =
      name === DEFAULT_LATE_SINK ? DEFAULT_LATE_SINK : requireSinkName('sideOutputLateData', name);
    return this;
  }

  /** Stable id of this operator's state; set it before changing a pipeline that has state. */
  uid(uid: string): this {
    this.uidValue = requireUid(uid);
    return this;
  }

  aggregate<Acc, R>(aggregate: AggregateFunction<T, Acc, R>): ProcessedStream<WindowResult<K, R>, T>;
  aggregate<Acc, R, Out>(
    aggregate: AggregateFunction<T, Acc, R>,
    windowFunction: WindowFunction<K, R, Out>,
  ): ProcessedStream<Out, T>;
  aggregate<Acc, R, Out>(
    aggregate: AggregateFunction<T, Acc, R>,
    windowFunction?: WindowFunction<K, R, Out>,
  ): ProcessedStream<Out, T> {
    checkAggregate('aggregate', aggregate);
    if (windowFunction !== undefined) requireFunction('aggregate window function', windowFunction);
    if (this.assigner.kind === 'session' && typeof aggregate.merge !== 'function') {
      throw new PipelineDefinitionError(
        'session windows merge, so their aggregate needs a merge(a, b) function; add one or use reduce()',
      );
    }
    const options = {
      aggregate: aggregate as AggregateFunction<unknown, Acc, R>,
      windowFunction: windowFunction as WindowFunction<StateKey, R, Out> | undefined,
      allowedLateness: this.lateness,
      lateOutput: this.lateName,
      earlyFiring: this.early,
    };
    const fn =
      this.assigner.kind === 'session'
        ? sessionWindowOperator(this.assigner, options)
        : alignedWindowOperator(this.assigner, options);
    const stream = this.keyed.addOperator<Out, T>(
      'window',
      fn as unknown as KeyedProcessFunction<unknown, unknown, StateSpec>,
      this.uidValue,
      this.lateName,
      this.assigner.kind,
      this.assigner.kind === 'session' ? undefined : this.assigner.size,
    );
    stream.lateOutputName = this.lateName;
    return stream;
  }

  reduce(reduce: (a: T, b: T) => T): ProcessedStream<WindowResult<K, T>, T>;
  reduce<Out>(reduce: (a: T, b: T) => T, windowFunction: WindowFunction<K, T, Out>): ProcessedStream<Out, T>;
  reduce<Out>(
    reduce: (a: T, b: T) => T,
    windowFunction?: WindowFunction<K, T, Out>,
  ): ProcessedStream<Out, T> {
    requireFunction('reduce', reduce);
    return windowFunction === undefined
      ? (this.aggregate(reducing(reduce)) as unknown as ProcessedStream<Out, T>)
      : this.aggregate(reducing(reduce), windowFunction);
  }
}

/**
 * The output of a keyed operator, with access to its side outputs. `Late` is the type of the
 * elements `lateData()` returns: a window's input elements; `never` for a process function,
 * which has no late data (calling `lateData()` on it does not type-check).
 */
export class ProcessedStream<T, Late = unknown> extends DataStream<T> {
  /** @internal */ lateOutputName: string | undefined;

  /**
   * The elements sent to `ctx.output(name, ...)`; unconsumed side outputs go to a sink of that name.
   * With a tag from `outputTag<U>(name)` the stream's elements are U; with a plain name, `unknown`
   * unless given (`sideOutput<U>(name)`, unchecked).
   */
  sideOutput<U = unknown>(name: OutputTag<U>): DataStream<U> {
    // "floe." names are floe's own: a window's late data (default "floe.late") is lateData().
    return this.consume<U>(requireSinkName('sideOutput', name));
  }

  /** Elements no window accepted because they were later than the allowed lateness. */
  lateData(this: ProcessedStream<T, Late> & LateDataOfWindows<Late>): DataStream<Late> {
    if (this.lateOutputName === undefined) {
      throw new PipelineDefinitionError('lateData() is only available on the result of a window aggregation');
    }
    return this.consume<Late>(this.lateOutputName);
  }

  private consume<U>(name: string): DataStream<U> {
    return new DataStream<U>(
      this.pipeline,
      this.pipeline.add({ kind: 'sideOutput', input: this.node, name }),
    );
  }

  /** Stable id of this operator's state (see WindowedStream.uid). */
  uid(uid: string): this {
    this.node.uid = requireUid(uid);
    return this;
  }
}

/**
 * Where a stream has no late data (a process function's output, `Late` = never), `lateData()`'s
 * `this` must also be this message, which no stream is, so the call is a type error naming it.
 */
type LateDataOfWindows<Late> = [Late] extends [never]
  ? 'lateData() is only available on the result of a window aggregation'
  : unknown;
