import { appendFileSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigurationError, StateFormatError, StateSerializationError } from '../core/errors.ts';
import type { Output } from '../core/ports.ts';
import { NdjsonFileSink, outputTableJob, outputTableName, SqliteTableSink, StdoutSink } from './sinks.ts';
import { openSqlite } from './sqlite.ts';

const dir = mkdtempSync(join(tmpdir(), 'floe-sinks-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));
let n = 0;
const file = (ext: string) => join(dir, `sink-${++n}.${ext}`);

const out = (commit: number, index: number, value: unknown, sink = 'counts'): Output => ({
  id: `job/shardId-000000000000/${commit}/${index}`,
  sink,
  value,
});

async function rejection(promise: Promise<unknown>): Promise<Error> {
  try {
    await promise;
  } catch (error) {
    return error as Error;
  }
  throw new Error('expected a rejection');
}

describe('SqliteTableSink', () => {
  it('stores each output once by id (INSERT OR IGNORE), in first-publish order, across reopen', async () => {
    const path = file('db');
    let sink = SqliteTableSink.open(path, { clock: () => 42 });
    const batch1 = [out(1, 0, { key: 'a', n: 1 }), out(1, 1, 'text 😀'), out(1, 2, null, 'floe.late')];
    await sink.publish(batch1);
    // A retry republishes the same outputs (and the same id with another value is ignored).
    await sink.publish([...batch1, { ...out(1, 0, 'CHANGED') }, out(2, 0, [1, 2])]);
    expect(sink.count()).toBe(4);
    expect(sink.count('counts')).toBe(3);
    expect(sink.rows('floe.late')).toEqual([
      { id: batch1[2]!.id, sink: 'floe.late', value: null, publishedAt: 42 },
    ]);
    await sink.close();

    sink = SqliteTableSink.open(path);
    await sink.publish(batch1);
    expect(sink.rows().map((r) => [r.id, r.value])).toEqual([
      [batch1[0]!.id, { key: 'a', n: 1 }],
      [batch1[1]!.id, 'text 😀'],
      [batch1[2]!.id, null],
      [out(2, 0, 0).id, [1, 2]],
    ]);
    await sink.close();
    await expect(sink.publish(batch1)).rejects.toBeInstanceOf(ConfigurationError);
  });

  it('shares a database, uses a custom table, and refuses bad table names and non-JSON values', async () => {
    const db = openSqlite(file('db'));
    try {
      const a = new SqliteTableSink(db, { table: 'results_a' });
      const b = new SqliteTableSink(db, { table: 'results_b' });
      await a.publish([out(1, 0, 1)]);
      await b.publish([out(1, 0, 2), out(1, 1, undefined)]);
      expect(a.rows().map((r) => r.value)).toEqual([1]);
      expect(b.rows().map((r) => r.value)).toEqual([2, undefined]);
      await a.close();
      expect(db.open).toBe(true);
      expect(() => new SqliteTableSink(db, { table: 'bad name; DROP' })).toThrow(ConfigurationError);
      expect(() => new SqliteTableSink(db, { table: '1abc' })).toThrow(ConfigurationError);
      const error = await rejection(b.publish([out(5, 0, 'ok'), out(5, 1, { big: 1n })]));
      expect(error).toBeInstanceOf(StateSerializationError);
      expect(b.count()).toBe(2); // nothing of the failed batch
    } finally {
      db.close();
    }
  });
});

describe('NdjsonFileSink', () => {
  it('appends one JSON line per new output and skips ids already in the file, after reopening too', async () => {
    const path = file('ndjson');
    let sink = await NdjsonFileSink.open(path);
    const batch = [out(1, 0, { a: 1 }), out(1, 1, 'x'), out(1, 1, 'x')];
    await sink.publish(batch);
    await sink.publish(batch);
    expect(sink.size).toBe(2);
    await sink.close();
    expect(readFileSync(path, 'utf8')).toBe(
      `{"id":"${batch[0]!.id}","sink":"counts","value":{"a":1}}\n{"id":"${batch[1]!.id}","sink":"counts","value":"x"}\n`,
    );

    sink = await NdjsonFileSink.open(path, { fsync: true });
    expect(sink.has(batch[0]!.id)).toBe(true);
    await sink.publish([...batch, out(2, 0, [true]), out(2, 1, undefined, 'other')]);
    await sink.close();
    const lines = readFileSync(path, 'utf8').trimEnd().split('\n');
    expect(lines).toHaveLength(4);
    expect(JSON.parse(lines[2]!)).toEqual({ id: out(2, 0, 0).id, sink: 'counts', value: [true] });
    expect(JSON.parse(lines[3]!)).toEqual({ id: out(2, 1, 0).id, sink: 'other' });
  });

  it('concurrent publishes of the same outputs write each once', async () => {
    const path = file('ndjson');
    const sink = await NdjsonFileSink.open(path);
    const batch = Array.from({ length: 50 }, (_, i) => out(1, i, i));
    await Promise.all([sink.publish(batch), sink.publish(batch), sink.publish(batch.slice(10))]);
    await sink.close();
    expect(readFileSync(path, 'utf8').trimEnd().split('\n')).toHaveLength(50);
  });

  it('cuts off a torn last line left by a crash, so the output is written again whole', async () => {
    const path = file('ndjson');
    const first = out(1, 0, 'complete');
    const torn = out(1, 1, 'torn');
    writeFileSync(path, `${JSON.stringify(first)}\n`);
    appendFileSync(path, JSON.stringify(torn).slice(0, 20));
    const sink = await NdjsonFileSink.open(path);
    expect(sink.has(first.id)).toBe(true);
    expect(sink.has(torn.id)).toBe(false);
    await sink.publish([first, torn]);
    await sink.close();
    const lines = readFileSync(path, 'utf8').trimEnd().split('\n');
    expect(lines.map((l) => JSON.parse(l).value)).toEqual(['complete', 'torn']);
  });

  it('refuses a file with a corrupted line (StateFormatError), and starts a missing file in a new directory', async () => {
    const path = file('ndjson');
    writeFileSync(path, `${JSON.stringify(out(1, 0, 1))}\nnot json\n${JSON.stringify(out(1, 1, 1))}\n`);
    const error = await rejection(NdjsonFileSink.open(path));
    expect(error).toBeInstanceOf(StateFormatError);
    expect(error.message).toContain('line 2');
    writeFileSync(path, '{"no":"id"}\n');
    expect(await rejection(NdjsonFileSink.open(path))).toBeInstanceOf(StateFormatError);

    const nested = join(dir, `nested-${n}`, 'deeper', 'out.ndjson');
    const sink = await NdjsonFileSink.open(nested);
    await sink.publish([out(1, 0, 'x')]);
    await sink.close();
    expect(readFileSync(nested, 'utf8').split('\n')).toHaveLength(2);
  });
});

describe('StdoutSink', () => {
  it('prints each output once per process, as JSON lines or text', async () => {
    let printed = '';
    const stream = { write: (t: string) => (printed += t) };
    const json = new StdoutSink({ stream });
    await json.publish([out(1, 0, { a: 1 }), out(1, 1, 'b')]);
    await json.publish([out(1, 0, { a: 1 }), out(1, 2, 3)]);
    expect(
      printed
        .trimEnd()
        .split('\n')
        .map((l) => JSON.parse(l).id),
    ).toEqual([out(1, 0, 0).id, out(1, 1, 0).id, out(1, 2, 0).id]);

    printed = '';
    const textSink = new StdoutSink({ stream, format: 'text', rememberIds: 2 });
    await textSink.publish([out(1, 0, { a: 1 }), out(1, 1, 'b', 'other'), out(1, 2, 3)]);
    expect(printed).toBe('counts: {"a":1}\nother: "b"\ncounts: 3\n');
    // Only the 2 most recent ids are remembered.
    printed = '';
    await textSink.publish([out(1, 0, { a: 1 }), out(1, 2, 3)]);
    expect(printed).toBe('counts: {"a":1}\n');
  });
});

describe("outputTableName (the table of a job's outputs)", () => {
  it('gives jobs whose ids differ only in punctuation or case their own, readable tables', () => {
    expect(outputTableName('pv-b')).toBe('floe_out_pv-b');
    expect(outputTableName('pv_b')).toBe('floe_out_pv_b');
    expect(outputTableName('pv.b')).toBe('floe_out_pv.b');
    expect(outputTableName('PV-B')).toBe('floe_out_^p^v-^b'); // SQLite names ignore case
    expect(outputTableName('page-views')).toBe('floe_out_page-views');
    expect(outputTableName('7')).toBe('floe_out_7');
  });

  it('is injective and reversible over job ids (and any string)', () => {
    const jobs = [
      'pv-b',
      'pv_b',
      'pv.b',
      'PV-B',
      'pv-B',
      'Pv_b',
      'pvb',
      'pv--b',
      'pv_2db',
      'pv__b',
      'a-sink',
      'a',
      'x'.repeat(100),
      'X.'.repeat(50),
      'é',
      '😀',
      '^~41;',
      '^a',
      'sink',
      'floe_out_a',
    ];
    const tables = new Map<string, string>();
    for (const job of jobs) {
      const table = outputTableName(job);
      expect(table).toMatch(/^floe_out_[a-z0-9_.^~;-]*$/);
      expect(
        tables.get(table.toLowerCase()),
        `${job} and ${tables.get(table)} share ${table}`,
      ).toBeUndefined();
      tables.set(table.toLowerCase(), job);
      expect(outputTableJob(table)).toBe(job);
      // The table's index (<table>#sink) is never the table of another job.
      expect(outputTableJob(`${table}#sink`)).toBeUndefined();
    }
    expect(outputTableJob('floe_out_^~61;')).toBeUndefined(); // not canonical ("a" is kept)
    expect(outputTableJob('floe_sink_output')).toBeUndefined();
    expect(outputTableJob('floe_outbox')).toBeUndefined();
  });

  it('a 100-character job id gives a table name the sink accepts', () => {
    const db = openSqlite(file('db'));
    try {
      const sink = new SqliteTableSink(db, { table: outputTableName('A.'.repeat(50)) });
      expect(sink.table).toHaveLength(9 + 150);
      expect(() => new SqliteTableSink(db, { table: `t${'x'.repeat(512)}` })).toThrow(/up to 512 letters/);
    } finally {
      db.close();
    }
  });

  it('jobs pv-b and pv_b in one database keep their outputs apart', async () => {
    const db = openSqlite(file('db'));
    try {
      const dash = new SqliteTableSink(db, { table: outputTableName('pv-b') });
      const underscore = new SqliteTableSink(db, { table: outputTableName('pv_b') });
      await dash.publish([
        { id: 'pv-b/shardId-000000000000/1/0', sink: 'counts', value: 1 },
        { id: 'pv-b/shardId-000000000000/1/1', sink: 'counts', value: 2 },
      ]);
      await underscore.publish([{ id: 'pv_b/shardId-000000000000/1/0', sink: 'counts', value: 10 }]);
      expect(dash.count('counts')).toBe(2);
      expect(underscore.count('counts')).toBe(1);
      expect(underscore.rows().map((r) => r.id)).toEqual(['pv_b/shardId-000000000000/1/0']);
      const tables = db
        .prepare<[], { name: string }>(
          "SELECT name FROM sqlite_master WHERE type = 'table' AND name LIKE 'floe_out_%' ORDER BY name",
        )
        .all()
        .map((r) => r.name);
      expect(tables.map((t) => outputTableJob(t))).toEqual(['pv-b', 'pv_b']);
    } finally {
      db.close();
    }
  });
});
