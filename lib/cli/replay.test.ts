/** `floe replay --from-timestamp`: the times it takes. */
import { describe, expect, it } from 'vitest';
import { UsageError } from './args.ts';
import { parseTime } from './replay.ts';

describe('--from-timestamp', () => {
  it('takes epoch milliseconds, an ISO date (UTC) and an ISO date and time with its offset', () => {
    expect(parseTime('0')).toBe(0);
    expect(parseTime('1767225600000')).toBe(Date.UTC(2026, 0, 1));
    expect(parseTime('2026-01-01')).toBe(Date.UTC(2026, 0, 1));
    expect(parseTime('2026-01-01T10:00Z')).toBe(Date.UTC(2026, 0, 1, 10));
    expect(parseTime('2026-01-01T10:00:00Z')).toBe(Date.UTC(2026, 0, 1, 10));
    expect(parseTime('2026-01-01T12:00:00.250+02:00')).toBe(Date.UTC(2026, 0, 1, 10, 0, 0, 250));
    expect(parseTime('2028-02-29')).toBe(Date.UTC(2028, 1, 29));
  });

  it('refuses what Date.parse would read as another time, instead of replaying from it', () => {
    // Date.parse: "-5" is May 2001, "1.5" January 5th 2001, "tomorrow 1" January 1st 2001.
    for (const text of ['-5', '1.5', 'Jan 5', 'tomorrow 1', '0x10', '1e12', '', ' 5']) {
      expect(() => parseTime(text), text).toThrow(UsageError);
      expect(() => parseTime(text), text).toThrow(
        `--from-timestamp must be epoch milliseconds or an ISO 8601 date, or date and time with its offset (2026-01-01, 2026-01-01T10:00:00Z, 2026-01-01T12:00:00+02:00); received "${text}"`,
      );
    }
  });

  it('refuses a date that does not exist, which Date.parse rolls over, and a time without its offset', () => {
    for (const text of [
      '2026-02-30',
      '2026-02-29',
      '2026-13-01',
      '2026-01-01T24:00Z',
      '2026-01-01T10:60Z',
      '2026-01-01T10:00+25:00',
    ]) {
      expect(() => parseTime(text), text).toThrow(/: there is no such date or time; received/);
    }
    expect(() => parseTime('2026-01-01T10:00')).toThrow(
      /: a time needs its offset \(Z for UTC\), or it would be read in the local time zone; received "2026-01-01T10:00"$/,
    );
  });

  it("refuses a time past a Date's range", () => {
    expect(parseTime('8640000000000000')).toBe(8.64e15);
    expect(() => parseTime('8640000000000001')).toThrow(/within ±8640000000000000 ms \(a Date's range\)/);
  });
});
