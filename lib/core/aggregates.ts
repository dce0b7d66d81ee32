/**
 * Incremental aggregation functions (Flink's AggregateFunction) and common ones. The built-ins
 * check their arguments when called, so a mistake fails while the pipeline is built (a
 * PipelineDefinitionError), not on every record at run time.
 */
import { describeValue, PipelineDefinitionError } from './errors.ts';

/**
 * The members are function-typed properties rather than methods so that their parameters are
 * checked strictly: an aggregate of elements with more fields than the stream's does not
 * type-check on that stream (method parameters would be compared bivariantly).
 */
export interface AggregateFunction<In, Acc, Out> {
  create: () => Acc;
  add: (value: In, accumulator: Acc) => Acc;
  /** Needed by merging (session) windows; must be associative. */
  merge?: (a: Acc, b: Acc) => Acc;
  result: (accumulator: Acc) => Out;
}

/** Turns a reduce function into an aggregate whose accumulator is the reduced element. */
export function reducing<T>(reduce: (a: T, b: T) => T): AggregateFunction<T, T | null, T> {
  if (typeof reduce !== 'function') {
    throw new PipelineDefinitionError(
      `reducing needs a function combining two elements into one, e.g. reducing((a, b) => (a.ts > b.ts ? a : b)); received ${describeValue(reduce)}`,
    );
  }
  return {
    create: () => null,
    add: (value, acc) => (acc === null ? value : reduce(acc, value)),
    merge: (a, b) => (a === null ? b : b === null ? a : reduce(a, b)),
    result: (acc) => acc as T,
  };
}

export function count<T = unknown>(): AggregateFunction<T, number, number> {
  return { create: () => 0, add: (_v, acc) => acc + 1, merge: (a, b) => a + b, result: (acc) => acc };
}

/**
 * Checks the value selector of sum/min/max/average: a function of the element returning a number.
 * A field name passed instead (`sum('amount')`) gets the function to write in the message.
 */
function requireSelector(aggregate: string, purpose: string, of: unknown): void {
  if (typeof of === 'function') return;
  const field =
    typeof of === 'string' && of !== ''
      ? `; to use the field ${JSON.stringify(of)}, write ${aggregate}((e) => e${/^[A-Za-z_$][\w$]*$/.test(of) ? `.${of}` : `[${JSON.stringify(of)}]`})`
      : '';
  throw new PipelineDefinitionError(
    `${aggregate} needs a function returning the number to ${purpose}, e.g. ${aggregate}((e) => e.amount); received ${describeValue(of)}${field}`,
  );
}

/**
 * The selector's number for one element. Anything else is refused (a TypeError: the record is
 * dead-lettered) rather than coerced: "5" + "3" would concatenate, Math.min(5, null) is 0.
 */
function numberOf<T>(aggregate: string, of: (value: T) => number, value: T): number {
  const n: unknown = of(value);
  if (typeof n !== 'number' || !Number.isFinite(n)) {
    throw new TypeError(
      `${aggregate}: the value selector returned ${describeValue(n)} for an element; it must return a finite number (filter out elements without one, or convert with Number())`,
    );
  }
  return n;
}

export function sum<T>(of: (value: T) => number): AggregateFunction<T, number, number> {
  requireSelector('sum', 'add', of);
  return {
    create: () => 0,
    add: (v, acc) => acc + numberOf('sum', of, v),
    merge: (a, b) => a + b,
    result: (acc) => acc,
  };
}

export function min<T>(of: (value: T) => number): AggregateFunction<T, number | null, number | null> {
  requireSelector('min', 'compare', of);
  return {
    create: () => null,
    add: (v, acc) => (acc === null ? numberOf('min', of, v) : Math.min(acc, numberOf('min', of, v))),
    merge: (a, b) => (a === null ? b : b === null ? a : Math.min(a, b)),
    result: (acc) => acc,
  };
}

export function max<T>(of: (value: T) => number): AggregateFunction<T, number | null, number | null> {
  requireSelector('max', 'compare', of);
  return {
    create: () => null,
    add: (v, acc) => (acc === null ? numberOf('max', of, v) : Math.max(acc, numberOf('max', of, v))),
    merge: (a, b) => (a === null ? b : b === null ? a : Math.max(a, b)),
    result: (acc) => acc,
  };
}

export function average<T>(of: (value: T) => number): AggregateFunction<T, [number, number], number> {
  requireSelector('average', 'average', of);
  return {
    create: () => [0, 0],
    add: (v, acc) => [acc[0] + numberOf('average', of, v), acc[1] + 1],
    merge: (a, b) => [a[0] + b[0], a[1] + b[1]],
    result: (acc) => (acc[1] === 0 ? 0 : acc[0] / acc[1]),
  };
}

/** Collects the window's elements (Flink's ProcessWindowFunction over all elements). */
export function collect<T>(): AggregateFunction<T, T[], T[]> {
  return {
    create: () => [],
    // In place (state objects may be changed in place and written back, docs/dsl.md): a copy
    // per element made a window of n elements cost n² / 2 element copies.
    add: (v, acc) => {
      acc.push(v);
      return acc;
    },
    merge: (a, b) => [...a, ...b],
    result: (acc) => acc,
  };
}
