import { describe, expect, it } from 'vitest';
import { nonNegativeInt, positiveInt, UsageError } from './args.ts';

describe('numeric flags', () => {
  it('nonNegativeInt takes 0 and whole numbers, with the flag and the value in the error', () => {
    expect(nonNegativeInt('--commit-interval', undefined, 0)).toBe(0);
    expect(nonNegativeInt('--commit-interval', '0', 5)).toBe(0);
    expect(nonNegativeInt('--commit-interval', '1500', 0)).toBe(1500);
    for (const bad of ['-1', '1.5', 'x', '', ' ']) {
      expect(() => nonNegativeInt('--commit-interval', bad, 0)).toThrow(UsageError);
      expect(() => nonNegativeInt('--commit-interval', bad, 0)).toThrow(
        `--commit-interval must be a whole number >= 0; received "${bad}"`,
      );
    }
  });

  it('positiveInt rejects 0', () => {
    expect(positiveInt('--batch-size', '1', 9)).toBe(1);
    expect(() => positiveInt('--batch-size', '0', 9)).toThrow('--batch-size must be a whole number >= 1');
  });
});
