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
