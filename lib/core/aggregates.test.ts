/** The built-in aggregates check their arguments when called, i.e. while the pipeline is built. */
import { describe, expect, it } from 'vitest';
import { average, collect, count, max, min, reducing, sum } from './aggregates.ts';
import { compile } from './compile.ts';
import { pipeline } from './dsl.ts';
import { PipelineDefinitionError } from './errors.ts';
import { thrownBy } from './testing/thrown.ts';
import { monotonic } from './watermarks.ts';
import { tumbling } from './windows.ts';

interface Sale {
  readonly shop: string;
  readonly amount: number;
  readonly ts: number;
}

const refused = (fn: () => unknown): PipelineDefinitionError => thrownBy(fn, PipelineDefinitionError);

// Untyped calls, as from JavaScript or through `as never`.
const loose = {
  sum: sum as (of?: unknown) => unknown,
  min: min as (of?: unknown) => unknown,
  max: max as (of?: unknown) => unknown,
  average: average as (of?: unknown) => unknown,
};

describe('value selectors of sum, min, max and average', () => {
  it.each([
    ['sum', 'add'],
    ['min', 'compare'],
    ['max', 'compare'],
    ['average', 'average'],
  ] as const)('%s() without a function is refused, saying what to write', (name, purpose) => {
    expect(refused(() => loose[name]()).message).toBe(
      `${name} needs a function returning the number to ${purpose}, e.g. ${name}((e) => e.amount); received undefined`,
    );
    expect(refused(() => loose[name](null)).message).toContain('received null');
    expect(refused(() => loose[name](3)).message).toContain('received 3');
  });

  it('a field name gets the function to write instead', () => {
    expect(refused(() => loose.min('x')).message).toBe(
      'min needs a function returning the number to compare, e.g. min((e) => e.amount); received "x"; to use the field "x", write min((e) => e.x)',
    );
    expect(refused(() => loose.sum('unit price')).message).toContain(
      'to use the field "unit price", write sum((e) => e["unit price"])',
    );
    expect(refused(() => loose.max('')).message).toBe(
      'max needs a function returning the number to compare, e.g. max((e) => e.amount); received ""',
    );
  });

  it('reducing() without a function is refused', () => {
    expect(refused(() => reducing(undefined as never)).message).toBe(
      'reducing needs a function combining two elements into one, e.g. reducing((a, b) => (a.ts > b.ts ? a : b)); received undefined',
    );
  });

  it('fails while the pipeline is built, before any record is processed', () => {
    const p = pipeline('sales');
    const windowed = p
      .source<Sale>()
      .withTimestamps((s) => s.ts, monotonic())
      .keyBy((s) => s.shop)
      .window(tumbling({ size: 60_000 }));
    expect(() => windowed.aggregate(loose.sum() as never)).toThrow(PipelineDefinitionError);
    windowed.aggregate(sum((s) => s.amount)).sink('totals');
    expect(compile(p).sinks).toContain('totals');
  });

  it('a selector returning anything but a finite number fails the element, rather than coercing it', () => {
    const loose = (amount: unknown) => ({ shop: 'a', amount, ts: 1 }) as unknown as Sale;
    const amount = (s: Sale) => s.amount;
    // Coerced, these were "053", 0, 2.5, 26.5 and 1.
    expect(() => sum(amount).add(loose('5'), 0)).toThrow(
      new TypeError(
        'sum: the value selector returned "5" for an element; it must return a finite number (filter out elements without one, or convert with Number())',
      ),
    );
    expect(() => min(amount).add(loose(null), 5)).toThrow(/^min: the value selector returned null/);
    expect(() => min(amount).add(loose(undefined), null)).toThrow(
      /^min: the value selector returned undefined/,
    );
    expect(() => max(amount).add(loose(true), 1)).toThrow(/^max: the value selector returned true/);
    expect(() => average(amount).add(loose(Number.NaN), [0, 0])).toThrow(
      /^average: the value selector returned NaN/,
    );
    expect(() => sum(amount).add(loose(Number.POSITIVE_INFINITY), 0)).toThrow(/returned Infinity/);
  });

  it('collect() appends in place: a window of n elements is not n² / 2 copies', () => {
    const agg = collect<number>();
    const acc = agg.create();
    expect(agg.add(1, acc)).toBe(acc);
    expect(agg.add(2, acc)).toEqual([1, 2]);
    expect(agg.merge!([1], [2, 3])).toEqual([1, 2, 3]);
  });

  it('valid selectors compute as before', () => {
    const sales: Sale[] = [
      { shop: 'a', amount: 3, ts: 1 },
      { shop: 'a', amount: -1, ts: 2 },
      { shop: 'a', amount: 10, ts: 3 },
    ];
    const run = <Acc, R>(agg: {
      create(): Acc;
      add(v: Sale, acc: Acc): Acc;
      merge?(a: Acc, b: Acc): Acc;
      result(acc: Acc): R;
    }): R => agg.result(sales.reduce((acc, s) => agg.add(s, acc), agg.create()));
    expect(run(sum((s) => s.amount))).toBe(12);
    expect(run(min((s) => s.amount))).toBe(-1);
    expect(run(max((s) => s.amount))).toBe(10);
    expect(run(average((s) => s.amount))).toBe(4);
    expect(run(count())).toBe(3);
    expect(run(collect())).toEqual(sales);
    expect(run(reducing<Sale>((a, b) => (a.amount > b.amount ? a : b)))).toEqual(sales[2]);
  });
});
