/**
 * Local sinks. Each is idempotent by output id, so republishing after a crash between commit
 * and markPublished writes nothing twice: a SQLite table (output id as primary key), an NDJSON
 * file (the ids already in the file are read on open), and stdout (ids remembered in-process).
 * RoutingSink (lib/runtime/routing-sink.ts, re-exported) sends each named sink's outputs to its
 * own Sink.
 */
import { createReadStream } from 'node:fs';
import { type FileHandle, mkdir, open, truncate } from 'node:fs/promises';
import { dirname } from 'node:path';
import { ConfigurationError, describeValue, StateFormatError } from '../core/errors.ts';
import { outputValueJson } from '../core/outputs.ts';
import type { Output, Sink } from '../core/ports.ts';

export { RoutingSink } from '../runtime/routing-sink.ts';

import { ensureSchema } from './schema.ts';
import { openSqlite, retryIfBusy, type SqliteDatabase, type SqliteOpenOptions } from './sqlite.ts';

export const SINK_TABLE_SCHEMA_VERSION = 1;
export const DEFAULT_SINK_TABLE = 'floe_sink_output';

/** Prefix of the tables holding a job's published outputs (one table per job). */
export const OUTPUT_TABLE_PREFIX = 'floe_out_';

/**
 * The SQLite table holding a job's published outputs: `floe_out_` and the job id, readable
 * (`page-views` → `floe_out_page-views`; every statement quotes table names). SQLite compares
 * names without case, so an upper-case letter is written `^` and its lower case (`PV` →
 * `floe_out_^p^v`), and any character outside letters, digits, `.`, `_` and `-` (none is in a
 * job id) as `^~<hex code>;`. The mapping is injective and reversed by `outputTableJob`, so two
 * jobs never share a table; the table's index, `<table>#sink`, is never a job's table.
 */
export function outputTableName(job: string): string {
  let escaped = '';
  for (let i = 0; i < job.length; i++) {
    const char = job[i]!;
    if (/[a-z0-9._-]/.test(char)) escaped += char;
    else if (/[A-Z]/.test(char)) escaped += `^${char.toLowerCase()}`;
    else escaped += `^~${job.charCodeAt(i).toString(16)};`; // per UTF-16 code unit
  }
  return OUTPUT_TABLE_PREFIX + escaped;
}

/** The job whose outputs `table` holds (the inverse of `outputTableName`), or undefined. */
export function outputTableJob(table: string): string | undefined {
  if (!table.startsWith(OUTPUT_TABLE_PREFIX)) return undefined;
  const escaped = table.slice(OUTPUT_TABLE_PREFIX.length);
  if (!/^(?:[a-z0-9._-]|\^[a-z]|\^~[0-9a-f]{1,4};)*$/.test(escaped)) return undefined;
  const job = escaped.replace(/\^~([0-9a-f]{1,4});|\^([a-z])/g, (_m, code?: string, upper?: string) =>
    upper !== undefined ? upper.toUpperCase() : String.fromCharCode(Number.parseInt(code ?? '', 16)),
  );
  // Only the canonical spelling names a job's table.
  return outputTableName(job) === table ? job : undefined;
}

/** Longest sink table name (an output table of a 100-character job id is at most 209). */
const MAX_TABLE_NAME = 512;

/** One published output as the table sink stores it. */
export interface StoredOutput {
  readonly id: string;
  readonly sink: string;
  readonly value: unknown;
  /** Wall time of the first publish (epoch ms). */
  readonly publishedAt: number;
}

export interface SqliteTableSinkOptions {
  /**
   * Table name (letters, digits, underscores); a job's outputs go to `outputTableName(job)`.
   * @default floe_sink_output
   */
  readonly table?: string;
  /** Wall clock for publishedAt. @default Date.now */
  readonly clock?: () => number;
}

/** Writes outputs to a SQLite table: (id PRIMARY KEY, sink, JSON value), INSERT OR IGNORE. */
export class SqliteTableSink implements Sink {
  readonly table: string;
  private closed = false;
  private readonly clock: () => number;
  private readonly sql: ReturnType<typeof prepareSinkStatements>;

  /** Uses an open database; the caller owns it (close() leaves it open). */
  constructor(
    readonly db: SqliteDatabase,
    options: SqliteTableSinkOptions = {},
    private readonly ownsDatabase = false,
  ) {
    const table = options.table ?? DEFAULT_SINK_TABLE;
    if (
      typeof table !== 'string' ||
      !/^[A-Za-z_][A-Za-z0-9_.^~;-]*$/.test(table) ||
      table.length > MAX_TABLE_NAME
    ) {
      throw new ConfigurationError(
        `a sink table name is up to ${MAX_TABLE_NAME} letters, digits and the characters _ . - ^ ~ ; (as outputTableName writes them), starting with a letter or _; received ${describeValue(table)}`,
      );
    }
    this.table = table;
    this.clock = options.clock ?? Date.now;
    ensureSchema(
      db,
      `sink-table:${table}`,
      SINK_TABLE_SCHEMA_VERSION,
      `CREATE TABLE IF NOT EXISTS "${table}" (id TEXT PRIMARY KEY, sink TEXT NOT NULL, value TEXT, published_at INTEGER NOT NULL);
       CREATE INDEX IF NOT EXISTS "${table}#sink" ON "${table}" (sink);`,
    );
    this.sql = prepareSinkStatements(db, table);
  }

  /** Opens (or creates) the SQLite file at `path`. */
  static open(path: string, options: SqliteTableSinkOptions & SqliteOpenOptions = {}): SqliteTableSink {
    const db = openSqlite(path, options);
    try {
      return new SqliteTableSink(db, options, true);
    } catch (error) {
      db.close();
      throw error;
    }
  }

  async publish(outputs: readonly Output[]): Promise<void> {
    this.assertOpen();
    if (outputs.length === 0) return;
    const values = outputs.map((o) => outputValueJson(o) ?? null);
    const now = this.clock();
    const insert = this.db.transaction(() => {
      outputs.forEach((o, i) => {
        this.sql.insert.run(o.id, o.sink, values[i] ?? null, now);
      });
    });
    retryIfBusy(`publishing to table ${this.table}`, () => insert.immediate());
  }

  /** The stored outputs (of one sink, or all), in first-publish order. */
  rows(sink?: string): StoredOutput[] {
    this.assertOpen();
    const rows = sink === undefined ? this.sql.selectAll.all() : this.sql.selectSink.all(sink);
    return rows.map((r) => ({
      id: r.id,
      sink: r.sink,
      value: r.value === null ? undefined : (JSON.parse(r.value) as unknown),
      publishedAt: r.published_at,
    }));
  }

  count(sink?: string): number {
    this.assertOpen();
    return (sink === undefined ? this.sql.countAll.get() : this.sql.countSink.get(sink))?.n ?? 0;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    if (this.ownsDatabase) this.db.close();
  }

  private assertOpen(): void {
    if (this.closed) throw new ConfigurationError(`the SQLite sink table ${this.table} is closed`);
  }
}

export interface NdjsonFileSinkOptions {
  /** fsync after every publish (survives a power loss, slower). @default false */
  readonly fsync?: boolean;
}

/**
 * Appends outputs to a newline-delimited JSON file, one `{"id","sink","value"}` object per
 * line. Opening reads the ids already in the file (and cuts off a torn last line left by a
 * crash), so republished outputs are skipped.
 */
export class NdjsonFileSink implements Sink {
  private readonly ids: Set<string>;
  private queue: Promise<void> = Promise.resolve();
  private closed = false;

  private constructor(
    readonly path: string,
    private readonly handle: FileHandle,
    ids: Set<string>,
    private readonly options: NdjsonFileSinkOptions,
  ) {
    this.ids = ids;
  }

  static async open(path: string, options: NdjsonFileSinkOptions = {}): Promise<NdjsonFileSink> {
    await mkdir(dirname(path), { recursive: true });
    const ids = await readIds(path);
    const handle = await open(path, 'a');
    return new NdjsonFileSink(path, handle, ids, options);
  }

  /** Number of distinct outputs in the file. */
  get size(): number {
    return this.ids.size;
  }

  has(id: string): boolean {
    return this.ids.has(id);
  }

  publish(outputs: readonly Output[]): Promise<void> {
    // Publishes run one after the other, so two concurrent calls never write an id twice.
    const run = this.queue.then(() => this.write(outputs));
    this.queue = run.catch(() => {});
    return run;
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.queue;
    await this.handle.close();
  }

  private async write(outputs: readonly Output[]): Promise<void> {
    if (this.closed) throw new ConfigurationError(`the NDJSON sink ${this.path} is closed`);
    const fresh = new Set<string>();
    let text = '';
    for (const o of outputs) {
      if (this.ids.has(o.id) || fresh.has(o.id)) continue;
      fresh.add(o.id);
      text += `${outputLine(o)}\n`;
    }
    if (text.length === 0) return;
    await this.handle.appendFile(text, 'utf8');
    if (this.options.fsync) await this.handle.datasync();
    for (const id of fresh) this.ids.add(id);
  }
}

/** Anything with a `write(text)`, such as process.stdout. */
export interface TextWriter {
  write(text: string): unknown;
}

export interface StdoutSinkOptions {
  /** @default process.stdout */
  readonly stream?: TextWriter;
  /** `json`: one {"id","sink","value"} line per output; `text`: `sink: value`. @default json */
  readonly format?: 'json' | 'text';
  /** Ids remembered to skip republished outputs (most recent ones). @default 100000 */
  readonly rememberIds?: number;
}

/**
 * Prints outputs. Idempotent within the process only (it remembers the most recent ids); a
 * restarted process may print an output again.
 */
export class StdoutSink implements Sink {
  private readonly seen = new Set<string>();
  private readonly stream: TextWriter;
  private readonly format: 'json' | 'text';
  private readonly remember: number;

  constructor(options: StdoutSinkOptions = {}) {
    this.stream = options.stream ?? process.stdout;
    this.format = options.format ?? 'json';
    this.remember = Math.max(0, Math.floor(options.rememberIds ?? 100_000));
  }

  async publish(outputs: readonly Output[]): Promise<void> {
    let text = '';
    for (const o of outputs) {
      if (this.seen.has(o.id)) continue;
      this.rememberId(o.id);
      text +=
        this.format === 'json' ? `${outputLine(o)}\n` : `${o.sink}: ${outputValueJson(o) ?? 'undefined'}\n`;
    }
    if (text.length > 0) this.stream.write(text);
  }

  private rememberId(id: string): void {
    if (this.remember === 0) return;
    this.seen.add(id);
    if (this.seen.size > this.remember) {
      // Sets iterate in insertion order: drop the oldest id.
      const oldest = this.seen.values().next().value;
      if (oldest !== undefined) this.seen.delete(oldest);
    }
  }
}

function prepareSinkStatements(db: SqliteDatabase, table: string) {
  type Row = { id: string; sink: string; value: string | null; published_at: number };
  return {
    insert: db.prepare<[string, string, string | null, number]>(
      `INSERT OR IGNORE INTO "${table}" (id, sink, value, published_at) VALUES (?, ?, ?, ?)`,
    ),
    selectAll: db.prepare<[], Row>(`SELECT id, sink, value, published_at FROM "${table}" ORDER BY rowid`),
    selectSink: db.prepare<[string], Row>(
      `SELECT id, sink, value, published_at FROM "${table}" WHERE sink = ? ORDER BY rowid`,
    ),
    countAll: db.prepare<[], { n: number }>(`SELECT count(*) AS n FROM "${table}"`),
    countSink: db.prepare<[string], { n: number }>(`SELECT count(*) AS n FROM "${table}" WHERE sink = ?`),
  };
}

function outputLine(output: Output): string {
  const value = outputValueJson(output) ?? null;
  // Keys in a fixed order; an undefined value is written without the "value" key.
  return value === null
    ? `{"id":${JSON.stringify(output.id)},"sink":${JSON.stringify(output.sink)}}`
    : `{"id":${JSON.stringify(output.id)},"sink":${JSON.stringify(output.sink)},"value":${value}}`;
}

/** Reads the ids of an NDJSON sink file; cuts off a torn last line (a crash mid-write). */
async function readIds(path: string): Promise<Set<string>> {
  const ids = new Set<string>();
  let complete = 0; // bytes of complete lines
  let rest: Buffer = Buffer.alloc(0);
  let lineNumber = 0;
  const parseLine = (line: Buffer): void => {
    lineNumber++;
    const text = line.toString('utf8').trim();
    if (text.length === 0) return;
    let id: unknown;
    try {
      id = (JSON.parse(text) as { id?: unknown }).id;
    } catch (error) {
      throw new StateFormatError(
        `line ${lineNumber} of the NDJSON sink file ${path} is not JSON (${String(error)}): ${text.slice(0, 80)}; fix or move the file`,
      );
    }
    if (typeof id !== 'string') {
      throw new StateFormatError(
        `line ${lineNumber} of the NDJSON sink file ${path} has no string "id": ${text.slice(0, 80)}; fix or move the file`,
      );
    }
    ids.add(id);
  };
  try {
    for await (const chunk of createReadStream(path)) {
      let data = rest.length > 0 ? Buffer.concat([rest, chunk as Buffer]) : (chunk as Buffer);
      let newline = data.indexOf(0x0a);
      while (newline >= 0) {
        parseLine(data.subarray(0, newline));
        complete += newline + 1;
        data = data.subarray(newline + 1);
        newline = data.indexOf(0x0a);
      }
      rest = Buffer.from(data);
    }
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT') return ids;
    throw error;
  }
  if (rest.length > 0) await truncate(path, complete);
  return ids;
}
