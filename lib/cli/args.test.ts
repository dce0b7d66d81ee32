import { describe, expect, it } from 'vitest';
import {
  formatTime,
  fraction,
  nonNegativeInt,
  parseFlags,
  positiveInt,
  throttled,
  UsageError,
} from './args.ts';

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

  it('positiveInt with a maximum names the range', () => {
    expect(positiveInt('--shards', '1024', 1, 1024)).toBe(1024);
    for (const bad of ['0', '1025', '99999999', '2.5', 'x', '']) {
      expect(() => positiveInt('--shards', bad, 1, 1024)).toThrow(
        `--shards must be a whole number from 1 to 1024; received "${bad}"`,
      );
    }
  });

  it('fraction takes 0 to 1; an empty value is refused, not read as 0', () => {
    expect(fraction('--late', undefined, 0.5)).toBe(0.5);
    expect(fraction('--late', '0', 0.5)).toBe(0);
    expect(fraction('--late', '0.25', 0.5)).toBe(0.25);
    expect(fraction('--late', '1', 0.5)).toBe(1);
    expect(fraction('--late', '1.000', 0.5)).toBe(1);
    for (const bad of ['', ' ', '-0.1', '1.5', '2', 'NaN', 'x', 'Infinity', '.', '0.', '1.0.0', '0,5']) {
      expect(() => fraction('--late', bad, 0.5)).toThrow(UsageError);
      expect(() => fraction('--late', bad, 0.5)).toThrow(
        `--late must be a number from 0 to 1, written as a plain decimal (0, 0.05, .5 or 1); received "${bad}"`,
      );
    }
  });

  it('fraction takes a plain decimal only (a leading point is one): no exponent, hex, sign or spaces', () => {
    expect(fraction('--out-of-order', '.5', 0)).toBe(0.5);
    expect(fraction('--out-of-order', '00.050', 0)).toBe(0.05);
    for (const [bad, meant] of [
      ['1e-1', '0.1'],
      ['0x0', '0'],
      [' .5', '0.5'],
      ['.5 ', '0.5'],
      ['+0.1', '0.1'],
      ['.5e0', '0.5'],
      ['-0', '0'],
    ] as const) {
      expect(() => fraction('--out-of-order', bad, 0)).toThrow(
        `--out-of-order must be a number from 0 to 1, written as a plain decimal (0, 0.05, .5 or 1); received "${bad}" (write it as a plain decimal: ${meant})`,
      );
    }
    // No hint when the number meant is out of range, or has no plain form.
    for (const bad of ['1e1', '1e-7']) {
      expect(() => fraction('--late', bad, 0)).toThrow(new RegExp(`received "${bad}"$`));
    }
  });

  it('takes decimal digits only: no exponent, hex, sign, spaces or fraction, nor past 2^53 - 1', () => {
    expect(positiveInt('--shards', '010', 1, 1024)).toBe(10);
    expect(positiveInt('--seed', String(Number.MAX_SAFE_INTEGER), 1)).toBe(Number.MAX_SAFE_INTEGER);
    for (const [bad, meant] of [
      ['1e1', 10],
      ['0x2', 2],
      ['+3', 3],
      [' 2', 2],
      ['2 ', 2],
      ['1.0', 1],
    ] as const) {
      expect(() => positiveInt('--shards', bad, 1, 1024)).toThrow(
        `--shards must be a whole number from 1 to 1024; received "${bad}" (write it in decimal digits: ${meant})`,
      );
      expect(() => nonNegativeInt('--commit-interval', bad, 0)).toThrow(UsageError);
    }
    expect(() => positiveInt('--events', '1e21', 1)).toThrow(
      '--events must be a whole number >= 1; received "1e21"',
    );
    expect(() => positiveInt('--events', '9007199254740992', 1)).toThrow(
      '--events must be a whole number from 1 to 9007199254740991; received "9007199254740992"',
    );
    expect(() => nonNegativeInt('--poison', '99999999999999999999', 0)).toThrow(
      '--poison must be a whole number from 0 to 9007199254740991; received "99999999999999999999"',
    );
    expect(() => nonNegativeInt('--poison', '-0', 0)).toThrow('received "-0"');
  });

  it('positiveInt rejects 0', () => {
    expect(positiveInt('--batch-size', '1', 9)).toBe(1);
    expect(() => positiveInt('--batch-size', '0', 9)).toThrow('--batch-size must be a whole number >= 1');
  });
});

describe('parseFlags', () => {
  const options = {
    'until-idle': { type: 'boolean' },
    'data-dir': { type: 'string' },
    job: { type: 'string' },
    stop: { type: 'boolean' },
  } as const;
  const error = (args: string[]): string => {
    try {
      parseFlags('run', { args, options, allowPositionals: true });
    } catch (e) {
      expect(e).toBeInstanceOf(UsageError);
      return (e as Error).message;
    }
    throw new Error(`accepted: ${args.join(' ')}`);
  };

  it('parses as node parseArgs does', () => {
    expect(
      parseFlags('run', { args: ['p.ts', '--job', 'j', '--until-idle'], options, allowPositionals: true }),
    ).toEqual({
      values: { job: 'j', 'until-idle': true },
      positionals: ['p.ts'],
    });
  });

  it('names the command and the closest option of a misspelt one, instead of node advice to use --', () => {
    expect(error(['--untl-idle'])).toBe(
      "unknown option --untl-idle for 'floe run' (did you mean --until-idle?); see 'floe run --help'",
    );
    expect(error(['--data_dir', 'x'])).toMatch(/did you mean --data-dir\?/);
    expect(error(['--jbo', 'x'])).toMatch(/did you mean --job\?/);
    expect(error(['--stp'])).toMatch(/did you mean --stop\?/);
    expect(error(['--zzz'])).toBe("unknown option --zzz for 'floe run'; see 'floe run --help'");
    expect(error(['-x'])).toBe("unknown option -x for 'floe run'; see 'floe run --help'");
  });

  it('leaves other parse errors to the caller', () => {
    expect(() => parseFlags('run', { args: ['--job'], options })).toThrow(/argument missing/);
  });
});

describe('throttled', () => {
  it('skips calls until the last one is at most a tenth of the time since it started', () => {
    let now = 0;
    let calls = 0;
    // Every call takes 50 ms (a progress render over a long stream).
    const render = throttled(
      () => {
        calls++;
        now += 50;
      },
      0.1,
      () => now,
    );
    const ticks: number[] = [];
    for (let t = 0; t <= 1_000; t += 100) {
      now = Math.max(now, t);
      const before = calls;
      render();
      if (calls > before) ticks.push(t);
    }
    // 50 ms of work per call: at most one call per 500 ms.
    expect(ticks).toEqual([0, 500, 1_000]);
  });
});

describe('formatTime', () => {
  it('writes ISO times, the infinities, and times past a Date range as epoch ms instead of throwing', () => {
    expect(formatTime(0)).toBe('1970-01-01T00:00:00Z');
    expect(formatTime(1500)).toBe('1970-01-01T00:00:01.500Z');
    expect(formatTime(Number.NEGATIVE_INFINITY)).toBe('-inf');
    expect(formatTime(Number.POSITIVE_INFINITY)).toBe('+inf');
    expect(formatTime(-8.64e15)).toBe('-271821-04-20T00:00:00Z');
    // The watermark after an event at -8.64e15 with 5 s of out-of-orderness.
    expect(formatTime(-8.64e15 - 5001)).toBe('-8640000000005001 ms');
    expect(formatTime(8.64e15 + 1)).toBe('8640000000000001 ms');
  });
});
