/** The records `floe produce --generate clickstream` writes. */
import { describe, expect, it } from 'vitest';
import { clickRecords } from './produce.ts';

const generate = (events: number, poison: number) =>
  [
    ...clickRecords({
      events,
      rate: 200,
      users: 20,
      pages: 5,
      outOfOrder: 0.05,
      late: 0.005,
      seed: 42,
      partitionKey: 'user',
      poison,
      start: Date.UTC(2026, 0, 1),
    }),
  ].map((r) => r.data as string);

describe('clickRecords --poison', () => {
  it('adds exactly the invalid records asked for, more than events included', () => {
    for (const [events, poison] of [
      [10, 50],
      [100, 60],
      [100, 7],
      [100, 0],
      [300, 1],
    ] as const) {
      const data = generate(events, poison);
      const invalid = data.filter((d) => d.includes('oops'));
      expect(invalid, `${events} events, ${poison} poison`).toHaveLength(poison);
      expect(data).toHaveLength(events + poison);
      for (const d of invalid) expect(() => JSON.parse(d)).toThrow(SyntaxError);
    }
  });
});
