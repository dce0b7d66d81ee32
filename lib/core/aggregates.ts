/** Incremental aggregation functions (Flink's AggregateFunction) and common ones. */

export interface AggregateFunction<In, Acc, Out> {
  create(): Acc;
  add(value: In, accumulator: Acc): Acc;
  /** Needed by merging (session) windows; must be associative. */
  merge?(a: Acc, b: Acc): Acc;
  result(accumulator: Acc): Out;
}

/** Turns a reduce function into an aggregate whose accumulator is the reduced element. */
export function reducing<T>(reduce: (a: T, b: T) => T): AggregateFunction<T, T | null, T> {
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

export function sum<T>(of: (value: T) => number): AggregateFunction<T, number, number> {
  return { create: () => 0, add: (v, acc) => acc + of(v), merge: (a, b) => a + b, result: (acc) => acc };
}

export function min<T>(of: (value: T) => number): AggregateFunction<T, number | null, number | null> {
  return {
    create: () => null,
    add: (v, acc) => (acc === null ? of(v) : Math.min(acc, of(v))),
    merge: (a, b) => (a === null ? b : b === null ? a : Math.min(a, b)),
    result: (acc) => acc,
  };
}

export function max<T>(of: (value: T) => number): AggregateFunction<T, number | null, number | null> {
  return {
    create: () => null,
    add: (v, acc) => (acc === null ? of(v) : Math.max(acc, of(v))),
    merge: (a, b) => (a === null ? b : b === null ? a : Math.max(a, b)),
    result: (acc) => acc,
  };
}

export function average<T>(of: (value: T) => number): AggregateFunction<T, [number, number], number> {
  return {
    create: () => [0, 0],
    add: (v, acc) => [acc[0] + of(v), acc[1] + 1],
    merge: (a, b) => [a[0] + b[0], a[1] + b[1]],
    result: (acc) => (acc[1] === 0 ? 0 : acc[0] / acc[1]),
  };
}

/** Collects the window's elements (Flink's ProcessWindowFunction over all elements). */
export function collect<T>(): AggregateFunction<T, T[], T[]> {
  return {
    create: () => [],
    add: (v, acc) => [...acc, v],
    merge: (a, b) => [...a, ...b],
    result: (acc) => acc,
  };
}
