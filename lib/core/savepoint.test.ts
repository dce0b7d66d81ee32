/** The savepoint format: state files, manifests, compatibility, migration encoding, retention. */
import { describe, expect, it } from 'vitest';
import { count } from './aggregates.ts';
import { initialCheckpoint } from './checkpoint.ts';
import { compile } from './compile.ts';
import { pipeline } from './dsl.ts';
import { StateFormatError } from './errors.ts';
import {
  checkCompatibility,
  checkMigratedTimer,
  checkpointJson,
  compareSequenceNumbers,
  decodeSavedEntry,
  decodeStateFile,
  encodeMigratedEntry,
  encodeStateFile,
  listState,
  MAX_TIMER_TIME,
  mapState,
  monotonic,
  newSavepointId,
  operatorSchemas,
  parseManifest,
  type SavepointManifest,
  sealManifest,
  serializeManifest,
  session,
  sliding,
  trimmedReason,
  tumbling,
  valueState,
} from './index.ts';

function plan(
  options: {
    window?: 'tumbling' | 'sliding' | 'session';
    /** Tumbling and sliding windows. @default 10 */
    size?: number;
    process?: boolean;
    ttl?: boolean;
    listN?: boolean;
  } = {},
) {
  const p = pipeline('compat', { version: '2' });
  const keyed = p
    .source<{ k: string; ts: number }>()
    .withTimestamps((e) => e.ts, monotonic())
    .keyBy((e) => e.k);
  if (options.window !== undefined) {
    const assigner =
      options.window === 'session'
        ? session({ gap: 10 })
        : options.window === 'sliding'
          ? sliding({ size: options.size ?? 10, slide: 5 })
          : tumbling({ size: options.size ?? 10 });
    keyed.window(assigner).uid('w').aggregate(count()).sink('out');
  }
  if (options.process !== false) {
    keyed
      .process(
        {
          state: {
            n: options.listN
              ? listState<number>()
              : valueState<number>(options.ttl ? { ttl: 1000 } : undefined),
            m: mapState<string, number>(),
          },
          processElement() {},
        },
        { uid: 'p' },
      )
      .sink('out');
  }
  return compile(p);
}

describe('savepoint state files', () => {
  const entries: Array<[string, string]> = [
    ['p/"a"', '{"k":"a","s":{"n":[1]}}'],
    ['p/"b/c"', '{"k":"b/c","s":{"m":[["x",2]]}}'],
    ['w/7', '{"k":7,"s":{"w":[[0,3]]}}'],
  ];

  it('round-trips entries exactly, with a checksum', () => {
    const { data, file } = encodeStateFile('state-00000.ndjson.gz', entries);
    expect(file).toMatchObject({ name: 'state-00000.ndjson.gz', entries: 3, bytes: data.byteLength });
    expect(file.sha256).toMatch(/^[0-9a-f]{64}$/);
    expect(decodeStateFile(data, file, 'f')).toEqual(entries);
  });

  it('rejects a missing, corrupted, truncated or miscounted file', () => {
    const { data, file } = encodeStateFile('s', entries);
    expect(() => decodeStateFile(undefined, file, 'f')).toThrow(/f is missing/);
    const flipped = Uint8Array.from(data);
    flipped[5]! ^= 1;
    expect(() => decodeStateFile(flipped, file, 'f')).toThrow(/f is corrupted: its sha256 or size/);
    expect(() => decodeStateFile(data.subarray(0, 10), file, 'f')).toThrow(/corrupted/);
    expect(() => decodeStateFile(data, { ...file, entries: 4 }, 'f')).toThrow(
      /has 3 entries; the manifest says 4/,
    );
  });
});

describe('savepoint manifests', () => {
  const manifest = (): SavepointManifest =>
    sealManifest({
      format: 1,
      id: 'job-20260101T000000Z-abcd',
      createdAt: 1,
      job: 'job',
      generation: 0,
      stream: 's',
      backend: 'embedded',
      pipeline: { name: 'p', version: '1' },
      stopped: false,
      stateFormat: 1,
      checkpointFormat: 1,
      operators: operatorSchemas(plan({ window: 'tumbling' })),
      shards: [
        { checkpoint: checkpointJson({ ...initialCheckpoint('shard-0'), position: '5', commitNumber: 2 }) },
      ],
      files: [],
      entries: 0,
      bytes: 0,
    });

  it('round-trips and verifies its checksum', () => {
    const m = manifest();
    expect(parseManifest(serializeManifest(m), 'm')).toEqual(m);
    const edited = serializeManifest(m).replace('"generation": 0', '"generation": 1');
    expect(() => parseManifest(edited, 'm')).toThrow(/m is corrupted: its checksum does not match/);
    expect(() => parseManifest('{', 'm')).toThrow(/m is not valid JSON/);
    expect(() => parseManifest(JSON.stringify({ ...m, format: 9 }), 'm')).toThrow(/savepoint format 9/);
  });

  it('names savepoints by job and time', () => {
    expect(newSavepointId('page-views', Date.UTC(2026, 0, 1, 10, 23, 0, 120), () => 0.5)).toBe(
      'page-views-20260101T102300Z-8000',
    );
  });
});

describe('state compatibility', () => {
  it('accepts the same layout and a window function or new operator change', () => {
    const saved = operatorSchemas(plan({ window: 'tumbling' }));
    expect(checkCompatibility(saved, plan({ window: 'tumbling' }))).toMatchObject({
      compatible: true,
      issues: [],
    });
    const report = checkCompatibility(saved, plan({ window: 'sliding' }));
    expect(report.compatible).toBe(true);
    expect(report.issues[0]?.message).toMatch(/changed from tumbling to sliding windows/);
    expect(checkCompatibility(operatorSchemas(plan()), plan({ window: 'tumbling' })).compatible).toBe(true);
  });

  it('refuses another window size (open windows are saved by start only); the same size in another assigner is restored', () => {
    const saved = operatorSchemas(plan({ window: 'tumbling' }));
    expect(saved.find((o) => o.uid === 'w')).toMatchObject({ window: 'tumbling', size: 10 });
    const fatal = (p: ReturnType<typeof plan>) => checkCompatibility(saved, p).issues.filter((i) => i.fatal);
    expect(fatal(plan({ window: 'tumbling', size: 20 })).map((i) => i.message)).toEqual([
      'window operator "w" changed its window size from 10 to 20 ms: open windows are saved by their start only, so they cannot be restored with another size; keep the size, or give the changed operator a new uid (it starts empty) and drop the old one\'s state with --allow-non-restored-state',
    ]);
    expect(fatal(plan({ window: 'sliding', size: 20 }))).toHaveLength(1);
    expect(checkCompatibility(saved, plan({ window: 'sliding', size: 10 })).compatible).toBe(true);
    // Savepoints and job records written before sizes were recorded are not checked for it.
    const unrecorded = saved.map(({ size: _, ...o }) => o);
    expect(checkCompatibility(unrecorded, plan({ window: 'tumbling', size: 20 })).compatible).toBe(true);
  });

  it('refuses a changed layout with a message per problem', () => {
    const saved = operatorSchemas(plan({ window: 'tumbling' }));
    const messages = (p: ReturnType<typeof plan>) =>
      checkCompatibility(saved, p)
        .issues.filter((i) => i.fatal)
        .map((i) => i.message);
    expect(messages(plan({ window: 'session' }))).toEqual([
      'window operator "w" changed from tumbling to session windows, which keep state in another layout',
    ]);
    expect(messages(plan({ window: 'tumbling', ttl: true }))).toEqual([
      'state "n" of operator "p" had no TTL and has one now (TTL state stores write times)',
    ]);
    expect(messages(plan({ window: 'tumbling', listN: true }))).toEqual([
      'state "n" of operator "p" was value state and is now list state',
    ]);
    expect(messages(plan({ window: 'tumbling', process: false }))[0]).toMatch(
      /operator "p" has state in the savepoint but pipeline "compat" has no operator with that uid/,
    );
    // A saved state named like an Object.prototype member, no longer declared: dropped, not fatal.
    const withToString = saved.map((o) =>
      o.uid === 'p' ? { ...o, state: { ...o.state, toString: o.state.n! } } : o,
    );
    expect(checkCompatibility(withToString, plan({ window: 'tumbling' })).issues).toEqual([
      {
        operator: 'p',
        fatal: false,
        message: 'state "toString" of operator "p" is no longer declared; its saved values are dropped',
      },
    ]);
    const allowed = checkCompatibility(saved, plan({ window: 'tumbling', process: false }), {
      allowNonRestoredState: true,
    });
    expect(allowed).toMatchObject({ compatible: true, dropped: ['p'] });
  });
});

describe('migration encoding', () => {
  const schemas = new Map(operatorSchemas(plan({ window: 'tumbling', ttl: true })).map((o) => [o.uid, o]));

  it('decodes saved entries to user-level values and encodes them for the new layout', () => {
    const entry = decodeSavedEntry('p/"a"', '{"k":"a","s":{"n":[4,123],"m":[["x",1]]}}', schemas);
    expect(entry).toEqual({ operator: 'p', key: 'a', state: { n: 4, m: [['x', 1]] } });
    expect(encodeMigratedEntry({ ...entry, state: { n: 5, m: [] } }, schemas, 999)).toEqual([
      'p/"a"',
      '{"k":"a","s":{"n":[5,999]}}',
    ]);
    expect(encodeMigratedEntry({ ...entry, state: {} }, schemas, 1)).toBeUndefined();
    expect(() => encodeMigratedEntry({ ...entry, operator: 'gone' }, schemas, 1)).toThrow(
      /the pipeline has no operator "gone"/,
    );
    expect(() => encodeMigratedEntry({ ...entry, state: { zz: 1 } }, schemas, 1)).toThrow(
      /declares no state "zz"/,
    );
    // Not Object.prototype's members either.
    expect(() => encodeMigratedEntry({ ...entry, state: { constructor: 1 } }, schemas, 1)).toThrow(
      /declares no state "constructor"/,
    );
    expect(() => encodeMigratedEntry({ ...entry, state: { m: 3 } }, schemas, 1)).toThrow(StateFormatError);
    // What JSON would change is refused, as a commit refuses it.
    expect(() => encodeMigratedEntry({ ...entry, state: { n: Number.NaN } }, schemas, 1)).toThrow(
      /migrated state of operator "p" for key "a": n is NaN, which JSON stores as null; a migration returns JSON state/,
    );
    expect(() => encodeMigratedEntry({ ...entry, state: { m: [['x', () => 1]] } }, schemas, 1)).toThrow(
      /m\[0\]\[1\] is a function/,
    );
  });

  it('refuses an entry whose state is not a plain object, or whose key JSON would change', () => {
    const entry = { operator: 'p', key: 'a', state: {} };
    // Before, these were written as nothing: the entry silently dropped.
    for (const state of [5, 'n', [['n', 1]], null, undefined, new Map([['n', 1]])]) {
      expect(() => encodeMigratedEntry({ ...entry, state: state as never }, schemas, 1)).toThrow(
        /migrated state of operator "p" for key "a": "state" must be a plain object of named states .*Return undefined to drop an entry/,
      );
    }
    expect(
      encodeMigratedEntry({ ...entry, state: Object.assign(Object.create(null), { n: 1 }) }, schemas, 1),
    ).toEqual(['p/"a"', '{"k":"a","s":{"n":[1,1]}}']);
    expect(() => encodeMigratedEntry({ ...entry, key: Number.NaN }, schemas, 1)).toThrow(
      /a key is a string or a finite number/,
    );
  });

  it('checks a migrated timer as a checkpoint stores it', () => {
    const t = { operator: 'p', domain: 'event', time: 10, key: 'a', namespace: '' };
    expect(checkMigratedTimer({ ...t, extra: 1 }, schemas, 'timer')).toEqual(t);
    for (const time of [Number.POSITIVE_INFINITY, Number.NEGATIVE_INFINITY, -5, MAX_TIMER_TIME]) {
      expect(checkMigratedTimer({ ...t, time }, schemas, 'timer').time).toBe(time);
    }
    expect(
      checkMigratedTimer({ ...t, key: 3, namespace: 7, domain: 'processing' }, schemas, 'timer'),
    ).toMatchObject({
      key: 3,
      namespace: 7,
    });
    for (const [bad, message] of [
      [
        { ...t, time: '10' },
        /timer: the migration's timer\(\) returned a timer whose time is not whole epoch milliseconds.*received "10"/,
      ],
      [{ ...t, time: Number.NaN }, /whose time .*received NaN/],
      [{ ...t, time: 1.5 }, /whose time/],
      [{ ...t, time: MAX_TIMER_TIME + 1 }, /whose time/],
      [
        { ...t, operator: 'gone' },
        /whose operator is not one of the pipeline's \(operators: w, p\); received "gone"/,
      ],
      [{ ...t, domain: 'e' }, /whose domain is not "event" or "processing"/],
      [{ ...t, key: null }, /whose key is not a string or a finite number; received null/],
      [{ ...t, key: Number.POSITIVE_INFINITY }, /whose key/],
      [
        { ...t, namespace: undefined },
        /whose namespace is not a string or a finite number; received undefined/,
      ],
      [{ ...t, namespace: Number.NaN }, /whose namespace/],
      [[t], /returned \[.*\]; expected \{operator, domain, time, key, namespace\}/],
      [7, /returned 7/],
    ] as const) {
      expect(() => checkMigratedTimer(bad, schemas, 'timer')).toThrow(StateFormatError);
      expect(() => checkMigratedTimer(bad, schemas, 'timer')).toThrow(message);
    }
  });
});

describe('retention', () => {
  const cmp = compareSequenceNumbers;
  const shard = { shardId: 's', position: '10', finished: false };
  it('knows when the records after a position are still there', () => {
    expect(trimmedReason(shard, { listed: true, oldest: '9' }, cmp)).toBeUndefined();
    expect(trimmedReason(shard, { listed: true, oldest: '10' }, cmp)).toBeUndefined();
    expect(trimmedReason({ ...shard, next: '15' }, { listed: true, oldest: '15' }, cmp)).toBeUndefined();
    expect(trimmedReason({ ...shard, next: '15' }, { listed: true, oldest: '16' }, cmp)).toMatch(
      /were trimmed/,
    );
    expect(trimmedReason(shard, { listed: true, oldest: '11' }, cmp)).toMatch(/were trimmed/);
    expect(trimmedReason(shard, { listed: false, oldest: undefined }, cmp)).toMatch(
      /no longer in the stream/,
    );
    expect(
      trimmedReason({ ...shard, finished: true }, { listed: false, oldest: undefined }, cmp),
    ).toBeUndefined();
  });
});
