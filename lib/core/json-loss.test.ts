/** jsonLoss: what JSON would not give back unchanged, and where. */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { jsonLoss } from './json-loss.ts';

describe('jsonLoss', () => {
  it('names the first value JSON would change, by path, and what JSON makes of it', () => {
    class Point {
      constructor(readonly x: number) {}
    }
    const sparse: unknown[] = [1];
    sparse[2] = 3;
    expect(jsonLoss(Number.NaN)).toBe('$ is NaN, which JSON stores as null');
    expect(jsonLoss({ a: [1, Number.NEGATIVE_INFINITY] }, 'total')).toBe(
      'total.a[1] is -Infinity, which JSON stores as null',
    );
    expect(jsonLoss({ f: () => 1 })).toBe('$.f is a function, which JSON does not store');
    expect(jsonLoss([undefined])).toBe('$[0] is undefined, which JSON stores as null');
    expect(jsonLoss(sparse)).toBe('$[1] is an empty array slot, which JSON stores as null');
    expect(jsonLoss({ 'a b': Symbol('s') })).toBe('$["a b"] is a symbol, which JSON does not store');
    expect(jsonLoss(10n)).toBe('$ is a BigInt, which JSON cannot store');
    expect(jsonLoss(new Map())).toBe('$ is a Map, which JSON stores as a plain object of its own fields');
    expect(jsonLoss(new Point(1))).toBe(
      '$ is a Point, which JSON stores as a plain object of its own fields',
    );
    expect(jsonLoss({ at: new Date(0) })).toBe(
      '$.at is a Date, which JSON stores as what its toJSON returns (store that instead)',
    );
  });

  it('accepts plain data, null-prototype objects and undefined properties (they read back as undefined)', () => {
    expect(jsonLoss({ a: [1, 'x', true, null, { b: -0 }], c: undefined })).toBeUndefined();
    expect(jsonLoss(Object.assign(Object.create(null) as object, { a: 1 }))).toBeUndefined();
  });

  it('property: a value jsonLoss accepts round-trips through JSON unchanged (-0 reads back as 0)', () => {
    const zeroed = (v: unknown): unknown =>
      Object.is(v, -0)
        ? 0
        : Array.isArray(v)
          ? v.map(zeroed)
          : typeof v === 'object' && v !== null
            ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, zeroed(x)]))
            : v;
    fc.assert(
      fc.property(fc.jsonValue(), (value) => {
        expect(jsonLoss(value)).toBeUndefined();
        expect(JSON.parse(JSON.stringify(value))).toEqual(zeroed(value));
      }),
    );
    let rejected = 0;
    fc.assert(
      fc.property(fc.anything(), (value) => {
        if (jsonLoss(value) !== undefined) rejected++;
        else expect(JSON.parse(JSON.stringify(value) ?? 'null')).toEqual(zeroed(value));
      }),
    );
    expect(rejected, 'fc.anything() produced values JSON changes').toBeGreaterThan(0);
  });
});
