import { createHash } from 'node:crypto';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ConfigurationError, compareSequenceNumbers } from '../core/index.ts';
import {
  decodePosition,
  encodePosition,
  LAST_SUB_INDEX,
  positionAfter,
  SUB_SEQUENCE_DIGITS,
} from './kinesis-source.ts';
import { aggregate, deaggregate, effectiveHashKey, hasKplMagic, KPL_MAGIC } from './kpl.ts';

/**
 * Written by the reference Node encoder, aws-kinesis-agg 4.2.8 (`aggregate()`), for the five records of
 * GOLDEN_RECORDS (a one-off run outside the repository; the package is not a dependency).
 */
const GOLDEN_HEX =
  'f3899ac20a06757365722d310a06757365722d320a0bd0bad0bbd18ed1872dc3bc0a06757365722d3312263835303730353931' +
  '3733303233343631353836353834333635313835373934323035323836341a0b08001a077b226e223a317d1a0b08011a077b22' +
  '6e223a327d1a0b08001a077b226e223a337d1a0808021a0400ff01fe1acf01080310001ac801' +
  '78'.repeat(200) +
  '9ebc03e171793ac35543f789f0c8df39';

const GOLDEN_RECORDS = [
  { partitionKey: 'user-1', data: Buffer.from('{"n":1}') },
  { partitionKey: 'user-2', data: Buffer.from('{"n":2}') },
  { partitionKey: 'user-1', data: Buffer.from('{"n":3}') },
  { partitionKey: 'ключ-ü', data: Buffer.from([0, 255, 1, 254]) },
  {
    partitionKey: 'user-3',
    explicitHashKey: '85070591730234615865843651857942052864',
    data: Buffer.from('x'.repeat(200)),
  },
];

const bytes = (hex: string) => Uint8Array.from(Buffer.from(hex, 'hex'));
const plain = (records: readonly { partitionKey: string; explicitHashKey?: string; data: Uint8Array }[]) =>
  records.map((r) => ({
    partitionKey: r.partitionKey,
    ...(r.explicitHashKey !== undefined ? { explicitHashKey: r.explicitHashKey } : {}),
    data: Buffer.from(r.data).toString('hex'),
  }));

describe('KPL aggregation format', () => {
  it('decodes the reference encoder (aws-kinesis-agg) output', () => {
    const golden = bytes(GOLDEN_HEX);
    expect(hasKplMagic(golden)).toBe(true);
    expect(plain(deaggregate(golden) ?? [])).toEqual(plain(GOLDEN_RECORDS));
  });

  it('encodes byte-for-byte like the reference encoder', () => {
    const agg = aggregate(GOLDEN_RECORDS);
    expect(Buffer.from(agg.data).toString('hex')).toBe(GOLDEN_HEX);
    expect(agg.partitionKey).toBe('user-1');
    expect(agg.explicitHashKey).toBeUndefined();
  });

  it('round-trips many records (multi-byte varints, empty data, shared keys)', () => {
    const records = Array.from({ length: 700 }, (_, i) => ({
      partitionKey: `k${i % 300}`,
      ...(i % 7 === 0 ? { explicitHashKey: String(BigInt(i) * 10n ** 30n) } : {}),
      data:
        i % 11 === 0 ? new Uint8Array(0) : Uint8Array.from(Buffer.from(`value-${i}-${'z'.repeat(i % 200)}`)),
    }));
    const agg = aggregate(records);
    expect(plain(deaggregate(agg.data) ?? [])).toEqual(plain(records));
  });

  it('round-trips arbitrary records (property)', () => {
    const record = fc.record({
      partitionKey: fc.string({ minLength: 1, maxLength: 20 }),
      explicitHashKey: fc.option(fc.bigInt({ min: 0n, max: (1n << 128n) - 1n }).map(String), {
        nil: undefined,
      }),
      data: fc.uint8Array({ maxLength: 300 }),
    });
    fc.assert(
      fc.property(fc.array(record, { minLength: 1, maxLength: 40 }), (records) => {
        const clean = records.map((r) =>
          r.explicitHashKey === undefined ? { partitionKey: r.partitionKey, data: r.data } : r,
        );
        const decoded = deaggregate(aggregate(clean).data);
        expect(plain(decoded ?? [])).toEqual(plain(clean as { partitionKey: string; data: Uint8Array }[]));
      }),
      { numRuns: 200 },
    );
  });

  it('treats anything that is not a valid aggregate as a plain record (undefined), like the KCL', () => {
    const good = aggregate([{ partitionKey: 'a', data: 'x' }]).data;
    expect(deaggregate(good)).toHaveLength(1);
    expect(deaggregate(Uint8Array.from(Buffer.from('{"plain":true}')))).toBeUndefined();
    expect(deaggregate(new Uint8Array(0))).toBeUndefined();
    expect(deaggregate(KPL_MAGIC)).toBeUndefined();
    // magic + only a digest: too short
    expect(deaggregate(Uint8Array.from([...KPL_MAGIC, ...new Uint8Array(16)]))).toBeUndefined();
    // wrong checksum
    const badSum = Uint8Array.from(good);
    badSum[badSum.length - 1] = (badSum[badSum.length - 1] ?? 0) ^ 1;
    expect(deaggregate(badSum)).toBeUndefined();
    // valid checksum over a malformed message: truncated field, index outside the table, no data
    const withSum = (message: number[]) =>
      Uint8Array.from([
        ...KPL_MAGIC,
        ...message,
        ...createHash('md5').update(Uint8Array.from(message)).digest(),
      ]);
    expect(deaggregate(withSum([0x0a, 0x05, 0x61]))).toBeUndefined();
    expect(
      deaggregate(withSum([0x0a, 0x01, 0x61, 0x1a, 0x05, 0x08, 0x01, 0x1a, 0x01, 0x78])),
    ).toBeUndefined();
    expect(deaggregate(withSum([0x0a, 0x01, 0x61, 0x1a, 0x02, 0x08, 0x00]))).toBeUndefined();
    // ... while unknown fields (here field 4 = 5) and tags are skipped
    expect(
      plain(
        deaggregate(
          withSum([
            0x0a, 0x01, 0x61, 0x20, 0x05, 0x1a, 0x09, 0x08, 0x00, 0x1a, 0x01, 0x78, 0x22, 0x02, 0x0a, 0x00,
          ]),
        ) ?? [],
      ),
    ).toEqual([{ partitionKey: 'a', data: '78' }]);
  });

  it('computes effective hash keys from the explicit hash key, else the MD5 of the partition key', () => {
    expect(effectiveHashKey({ partitionKey: 'a', explicitHashKey: '42' })).toBe(42n);
    expect(effectiveHashKey({ partitionKey: 'a' })).toBe(
      BigInt(`0x${createHash('md5').update('a').digest('hex')}`),
    );
  });
});

describe('KinesisSource positions', () => {
  const S = '49680585372683957910531551350926948881590704449678999554';

  it('appends a fixed-width sub-index; the last user record ends in 9s', () => {
    expect(encodePosition(S, 0)).toBe(`${S}0000000`);
    expect(encodePosition(S, 12)).toBe(`${S}0000012`);
    expect(encodePosition(S, 'last')).toBe(`${S}${'9'.repeat(SUB_SEQUENCE_DIGITS)}`);
    expect(positionAfter(S)).toBe(encodePosition(S, 'last'));
    expect(decodePosition(`${S}0000012`)).toEqual({ sequenceNumber: S, subIndex: 12 });
    expect(decodePosition(positionAfter(S))).toEqual({ sequenceNumber: S, subIndex: 'last' });
    expect(() => encodePosition(S, LAST_SUB_INDEX + 1)).toThrow(ConfigurationError);
    expect(() => encodePosition('0123', 0)).toThrow(ConfigurationError);
    expect(() => decodePosition('1234')).toThrow(ConfigurationError);
    expect(() => decodePosition('abc12345678')).toThrow(ConfigurationError);
  });

  it('orders positions like (sequence number, sub-index) under compareSequenceNumbers', () => {
    const seq = fc.bigInt({ min: 1n, max: 10n ** 60n }).map(String);
    const sub = fc.oneof(fc.integer({ min: 0, max: LAST_SUB_INDEX - 1 }), fc.constant('last' as const));
    fc.assert(
      fc.property(seq, sub, seq, sub, (s1, k1, s2, k2) => {
        const n1 = k1 === 'last' ? LAST_SUB_INDEX : k1;
        const n2 = k2 === 'last' ? LAST_SUB_INDEX : k2;
        const expected = Math.sign(BigInt(s1) !== BigInt(s2) ? (BigInt(s1) < BigInt(s2) ? -1 : 1) : n1 - n2);
        expect(Math.sign(compareSequenceNumbers(encodePosition(s1, k1), encodePosition(s2, k2)))).toBe(
          expected,
        );
      }),
      { numRuns: 2000 },
    );
  });
});
