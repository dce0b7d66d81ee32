/** The per-shard checkpoint model: JSON round trip, format errors, sequence number order. */
import { describe, expect, it } from 'vitest';
import {
  CHECKPOINT_FORMAT,
  compareSequenceNumbers,
  depthOf,
  deserializeCheckpoint,
  initialCheckpoint,
  pendingTimerCount,
  type ShardCheckpoint,
  serializeCheckpoint,
} from './checkpoint.ts';
import { StateFormatError } from './errors.ts';
import { MAX_WATERMARK, MIN_WATERMARK } from './time.ts';

const full: ShardCheckpoint = {
  shardId: 'shardId-000000000007',
  position: '49590338271490256608559692538361571095921575989136588898',
  commitNumber: 42,
  watermark: 1_700_000_000_000,
  maxTimestamp: 1_700_000_005_001,
  lastRecordAt: 1_700_000_010_000,
  timers: [
    {
      operator: 'window-0',
      domain: 'event',
      time: 1_700_000_059_999,
      key: 'page-1',
      namespace: 1_700_000_000_000,
    },
    { operator: 'window-0', domain: 'event', time: -5, key: 3, namespace: '' },
    {
      operator: 'process-0',
      domain: 'processing',
      time: 1_700_000_060_000,
      key: 'u"ser\u0000',
      namespace: 'ns',
    },
  ],
  finished: false,
};

describe('checkpoint serialization', () => {
  it('the initial checkpoint has no position, no timers and the minimum watermark', () => {
    expect(initialCheckpoint('shardId-000000000001')).toEqual({
      shardId: 'shardId-000000000001',
      position: undefined,
      commitNumber: 0,
      watermark: MIN_WATERMARK,
      maxTimestamp: MIN_WATERMARK,
      lastRecordAt: undefined,
      timers: [],
      finished: false,
    });
    expect(MIN_WATERMARK).toBe(Number.NEGATIVE_INFINITY);
  });

  it('round-trips the initial checkpoint, keeping -Infinity and undefined', () => {
    const initial = initialCheckpoint('s');
    const text = serializeCheckpoint(initial);
    const back = deserializeCheckpoint(text);
    expect(back).toStrictEqual(initial);
    expect(back.watermark).toBe(Number.NEGATIVE_INFINITY);
    expect(back.maxTimestamp).toBe(Number.NEGATIVE_INFINITY);
    expect(back.position).toBeUndefined();
    expect(back.lastRecordAt).toBeUndefined();
  });

  it('round-trips every field, timers included', () => {
    expect(deserializeCheckpoint(serializeCheckpoint(full))).toStrictEqual(full);
  });

  it('round-trips a +Infinity (end of input) watermark and a finished shard', () => {
    const ended: ShardCheckpoint = { ...full, watermark: MAX_WATERMARK, finished: true };
    const back = deserializeCheckpoint(serializeCheckpoint(ended));
    expect(back.watermark).toBe(Number.POSITIVE_INFINITY);
    expect(back).toStrictEqual(ended);
  });

  it('round-trips the lineage depth of a reshard child, omitted at 0; rejects a malformed one', () => {
    const child: ShardCheckpoint = { ...full, depth: 3 };
    expect(deserializeCheckpoint(serializeCheckpoint(child))).toStrictEqual(child);
    expect(JSON.parse(serializeCheckpoint({ ...full, depth: 0 })).depth).toBeUndefined();
    expect(depthOf(deserializeCheckpoint(serializeCheckpoint(full)))).toBe(0);
    const bad = serializeCheckpoint(child).replace('"depth":3', '"depth":-1');
    expect(() => deserializeCheckpoint(bad)).toThrow(/"depth" is not a positive integer/);
  });

  it('round-trips a negative finite watermark (events before 1970)', () => {
    const old: ShardCheckpoint = { ...full, watermark: -86_400_001, maxTimestamp: -86_400_000 };
    expect(deserializeCheckpoint(serializeCheckpoint(old))).toStrictEqual(old);
  });

  it('writes a versioned, compact JSON document', () => {
    const raw = JSON.parse(serializeCheckpoint(full)) as Record<string, unknown>;
    expect(raw.v).toBe(CHECKPOINT_FORMAT);
    expect(CHECKPOINT_FORMAT).toBe(3);
    expect(raw.timers).toEqual([
      ['window-0', 'e', 1_700_000_059_999, 'page-1', 1_700_000_000_000],
      ['window-0', 'e', -5, 3, ''],
      ['process-0', 'p', 1_700_000_060_000, 'u"ser\u0000', 'ns'],
    ]);
    const initial = JSON.parse(serializeCheckpoint(initialCheckpoint('s'))) as Record<string, unknown>;
    expect(initial).toEqual({
      v: 3,
      shardId: 's',
      position: null,
      commitNumber: 0,
      watermark: null,
      maxTimestamp: null,
      lastRecordAt: null,
      finished: false,
      timers: [],
    });
  });

  it('round-trips a timer log: chunk references, the tail and its counters', () => {
    const withLog: ShardCheckpoint = {
      ...full,
      timers: [full.timers[1]!],
      timerLog: {
        chunks: [
          {
            address: 'floe.timers/"s/0"',
            ops: 3,
            maxEventTime: 1_700_000_059_999,
            maxProcessingTime: MIN_WATERMARK,
          },
          {
            address: 'floe.timers/"s/2"',
            ops: 1,
            maxEventTime: MIN_WATERMARK,
            maxProcessingTime: MAX_WATERMARK,
          },
        ],
        tail: [
          { add: true, timer: full.timers[0]! },
          { add: false, timer: full.timers[2]! },
        ],
        processingFiredThrough: 1_700_000_000_000,
        nextChunk: 3,
        pending: 7,
      },
    };
    expect(deserializeCheckpoint(serializeCheckpoint(withLog))).toStrictEqual(withLog);
    expect(pendingTimerCount(withLog)).toBe(7);
    expect(pendingTimerCount(full)).toBe(3);
    const broken = serializeCheckpoint(withLog).replace('"nextChunk":3', '"nextChunk":"3"');
    expect(() => deserializeCheckpoint(broken)).toThrow(
      /checkpoint is corrupted: "timerLog" counters are malformed/,
    );
  });

  it('round-trips timers at the end of time (+Infinity)', () => {
    // checkTime accepts any non-NaN number, so a timer at MAX_WATERMARK ("end of input") is valid.
    const endTimer: ShardCheckpoint = {
      ...full,
      timers: [{ operator: 'process-0', domain: 'event', time: MAX_WATERMARK, key: 'k', namespace: '' }],
    };
    expect(deserializeCheckpoint(serializeCheckpoint(endTimer)).timers).toStrictEqual(endTimer.timers);
  });
});

describe('checkpoint format errors', () => {
  it('rejects text that is not JSON with a StateFormatError', () => {
    expect(() => deserializeCheckpoint('{"v":1,')).toThrow(StateFormatError);
    expect(() => deserializeCheckpoint('')).toThrow(/checkpoint is not valid JSON/);
    try {
      deserializeCheckpoint('garbage');
      expect.unreachable();
    } catch (error) {
      expect(error).toBeInstanceOf(StateFormatError);
      expect((error as StateFormatError).code).toBe('STATE_FORMAT');
      expect((error as StateFormatError).message).toContain('received garbage');
    }
  });

  it('rejects another format version, saying which ones are involved', () => {
    const v4 = serializeCheckpoint(full).replace('"v":3', '"v":4');
    expect(() => deserializeCheckpoint(v4)).toThrow(StateFormatError);
    expect(() => deserializeCheckpoint(v4)).toThrow(
      'checkpoint format 4 is not supported (this floe reads formats 1, 2 and 3); restore from a savepoint written by a compatible version',
    );
    // Format 1 (every timer inline, no timer log) and format 2 (the same encoding as 3) are still read.
    const v1 = serializeCheckpoint(full).replace('"v":3', '"v":1');
    expect(deserializeCheckpoint(v1)).toStrictEqual(full);
    const v2 = serializeCheckpoint(full).replace('"v":3', '"v":2');
    expect(deserializeCheckpoint(v2)).toStrictEqual(full);
    const unversioned = JSON.stringify({ ...JSON.parse(serializeCheckpoint(full)), v: undefined });
    expect(() => deserializeCheckpoint(unversioned)).toThrow('checkpoint format undefined is not supported');
    expect(() => deserializeCheckpoint('[]')).toThrow(StateFormatError);
  });

  it.each([
    ['null', 'null'],
    ['a version-1 object without fields', '{"v":1}'],
    [
      'timers that are not an array',
      JSON.stringify({ ...JSON.parse(serializeCheckpoint(full)), timers: 'x' }),
    ],
    [
      'a watermark that is not a time',
      JSON.stringify({ ...JSON.parse(serializeCheckpoint(full)), watermark: 'soon' }),
    ],
  ])('rejects a corrupted checkpoint (%s) with a StateFormatError', (_name, text) => {
    expect(() => deserializeCheckpoint(text)).toThrow(StateFormatError);
  });
});

describe('compareSequenceNumbers', () => {
  const a = '49590338271490256608559692538361571095921575989136588898';
  const b = '49590338271490256608559692538361571095921575989136588899';
  const c = '49590338271490256608559692540925702759324208523137515618';

  it('orders long decimal strings numerically without losing precision', () => {
    // As numbers these are equal (precision is lost beyond 2^53).
    expect(Number(a)).toBe(Number(b));
    expect(Math.sign(compareSequenceNumbers(a, b))).toBe(-1);
    expect(Math.sign(compareSequenceNumbers(b, a))).toBe(1);
    expect(compareSequenceNumbers(a, a)).toBe(0);
    expect(Math.sign(compareSequenceNumbers(b, c))).toBe(-1);
  });

  it('orders shorter numbers first, unlike string comparison', () => {
    expect('9' > '10').toBe(true);
    expect(Math.sign(compareSequenceNumbers('9', '10'))).toBe(-1);
    expect(Math.sign(compareSequenceNumbers('10', '9'))).toBe(1);
    expect(Math.sign(compareSequenceNumbers('999999999999999999999', '1000000000000000000000'))).toBe(-1);
    expect(Math.sign(compareSequenceNumbers(a, `${a}0`))).toBe(-1);
  });

  it('sorts a shuffled list like BigInt does', () => {
    const values = [
      c,
      '2',
      a,
      '10',
      '1',
      b,
      '100000000000000000000000000000000000000000000000000000000',
      '9',
    ];
    const byEngine = [...values].sort(compareSequenceNumbers);
    const byBigInt = [...values].sort((x, y) => (BigInt(x) < BigInt(y) ? -1 : BigInt(x) > BigInt(y) ? 1 : 0));
    expect(byEngine).toEqual(byBigInt);
    expect(byEngine).toEqual([
      '1',
      '2',
      '9',
      '10',
      a,
      b,
      c,
      '100000000000000000000000000000000000000000000000000000000',
    ]);
  });
});
