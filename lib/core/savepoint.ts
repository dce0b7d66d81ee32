/**
 * The savepoint format, shared by every backend (a local directory for the embedded backend,
 * S3 for AWS): a manifest plus gzip-compressed NDJSON state files. This module is pure: the
 * manifest model and its validation, the state-file codec with sha256 checksums, the
 * compatibility check of saved state against a compiled pipeline, and the migration hook.
 * File I/O lives behind the SnapshotStore port (lib/embedded, lib/aws); the export and restore
 * procedures live in lib/runtime/savepoints.ts.
 *
 * Layout of one savepoint `<id>/`:
 *   state-00000.ndjson.gz ...  one line per state entry: {"a": "<address>", "v": <entry JSON>}
 *   manifest.json              written LAST: a savepoint without a manifest is incomplete
 */
import { createHash } from 'node:crypto';
import { gunzipSync, gzipSync } from 'node:zlib';
import {
  deserializeCheckpoint,
  READABLE_CHECKPOINT_FORMATS,
  readableCheckpointFormats,
  type ShardCheckpoint,
  serializeCheckpoint,
  type TimerSpec,
} from './checkpoint.ts';
import type { PipelinePlan } from './compile.ts';
import { describeValue, StateFormatError } from './errors.ts';
import { jsonLoss } from './json-loss.ts';
import type { Output, StartPosition, StateAddress } from './ports.ts';
import type { StateDescriptor, StateKey } from './state.ts';
import { MAX_TIMER_TIME } from './time.ts';

export const SAVEPOINT_FORMAT = 1;
/** Version of the state entry encoding (`{"k": key, "s": {name: cell}}`, see state.ts). */
export const STATE_FORMAT_VERSION = 1;
export const MANIFEST_FILE = 'manifest.json';

/** How one named state of an operator is encoded. */
export interface StateSchema {
  readonly kind: 'value' | 'map' | 'list';
  /** TTL state stores a write time beside each value. */
  readonly ttl: boolean;
}

/** The state layout of one keyed operator. */
export interface OperatorSchema {
  readonly uid: string;
  /** 'unknown': the savepoint found entries of an operator the recorded pipeline did not declare. */
  readonly kind: 'window' | 'process' | 'unknown';
  /** Window operators: the assigner kind (sessions store [end, acc], aligned windows acc). */
  readonly window?: 'tumbling' | 'sliding' | 'session';
  /**
   * Tumbling and sliding windows: the window size in ms. An open window is stored by its start
   * only (its end is start + size), so a restore needs the same size. Absent in savepoints and job
   * records written before it was recorded.
   */
  readonly size?: number;
  readonly state: Readonly<Record<string, StateSchema>>;
}

export interface SavepointFile {
  readonly name: string;
  readonly entries: number;
  /** Size of the compressed file. */
  readonly bytes: number;
  readonly sha256: string;
}

export interface SavepointShard {
  /** The shard's checkpoint at the savepoint (position, commit number, watermark, timers...), in its JSON form. */
  readonly checkpoint: Record<string, unknown>;
  /** Position of the first record after the checkpoint when the savepoint was taken, if known. */
  readonly next?: string;
  /**
   * The shard's outbox at the savepoint: outputs it had committed but not yet delivered (one
   * line per output, `{"a": id, "v": output}`). A restore into the same job delivers them.
   */
  readonly outbox?: SavepointFile;
}

export interface SavepointPipeline {
  readonly name: string;
  readonly version: string;
  /** The pipeline module the job ran, when known (a replay without --pipeline uses it). */
  readonly module?: string;
}

export interface SavepointManifest {
  readonly format: number;
  readonly id: string;
  /** Epoch ms. */
  readonly createdAt: number;
  readonly job: string;
  readonly generation: number;
  readonly stream: string;
  /** The backend that wrote it: 'embedded' or 'aws'. */
  readonly backend: string;
  readonly pipeline: SavepointPipeline;
  /** Taken with --stop: the job stopped after it. */
  readonly stopped: boolean;
  /** Where shards without a checkpoint start (the job's configured start). */
  readonly startPosition?: StartPosition;
  readonly stateFormat: number;
  readonly checkpointFormat: number;
  readonly operators: readonly OperatorSchema[];
  readonly shards: readonly SavepointShard[];
  readonly files: readonly SavepointFile[];
  /** Total state entries and compressed bytes over all files. */
  readonly entries: number;
  readonly bytes: number;
  /** sha256 of this manifest's JSON with `checksum` set to "". */
  readonly checksum: string;
}

/** Where savepoints are stored. Every write is atomic: a reader never sees part of a file. */
export interface SnapshotStore {
  /** Human-readable location (a directory path or an s3:// URL), for messages. */
  readonly location: string;
  write(savepointId: string, name: string, data: Uint8Array): Promise<void>;
  /** The file's bytes, or undefined when it does not exist. */
  read(savepointId: string, name: string): Promise<Uint8Array | undefined>;
  /** Ids of every savepoint with at least one file (complete or not). */
  listSavepoints(): Promise<string[]>;
  listFiles(savepointId: string): Promise<string[]>;
  /** Removes the savepoint and all its files (no error if absent). */
  remove(savepointId: string): Promise<void>;
  /** Location of one file, for messages. */
  describe(savepointId: string, name?: string): string;
}

// ---- ids and names ------------------------------------------------------------------------------

const ID_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._-]{0,150}$/;

export function checkSavepointId(id: unknown): string {
  if (typeof id !== 'string' || !ID_PATTERN.test(id)) {
    throw new StateFormatError(
      `a savepoint id is 1-151 letters, digits, '.', '_' or '-' starting with a letter or digit; received ${describeValue(id)}`,
    );
  }
  return id;
}

/** `<job>-<UTC time>-<4 hex>`, e.g. `page-views-20260101T102300Z-3fa1`: sorts by time per job. */
export function newSavepointId(job: string, now: number, random: () => number = Math.random): string {
  const time = new Date(now)
    .toISOString()
    .replace(/[-:]/g, '')
    .replace(/\.\d+Z$/, 'Z');
  const suffix = Math.floor(random() * 0x10000)
    .toString(16)
    .padStart(4, '0');
  return `${job}-${time}-${suffix}`;
}

export function stateFileName(index: number): string {
  return `state-${String(index).padStart(5, '0')}.ndjson.gz`;
}

export function outboxFileName(shardIndex: number): string {
  return `outbox-${String(shardIndex).padStart(5, '0')}.ndjson.gz`;
}

/** A shard's undelivered outputs as a savepoint file (the state file encoding, keyed by id). */
export function encodeOutboxFile(name: string, outputs: readonly Output[]): EncodedStateFile {
  return encodeStateFile(
    name,
    outputs.map((o) => [o.id, JSON.stringify(o)]),
  );
}

/** Verifies and decodes an outbox file (see decodeStateFile). */
export function decodeOutboxFile(data: Uint8Array | undefined, file: SavepointFile, where: string): Output[] {
  return decodeStateFile(data, file, where).map(([id, text]) => {
    const output = JSON.parse(text) as Output;
    if (output?.id !== id || typeof output.sink !== 'string') {
      throw new StateFormatError(`${where} is corrupted: the output at id ${id} is ${text.slice(0, 80)}`);
    }
    return output;
  });
}

export function sha256(data: Uint8Array | string): string {
  return createHash('sha256').update(data).digest('hex');
}

// ---- schemas ------------------------------------------------------------------------------------

function schemaOf(d: StateDescriptor): StateSchema {
  return { kind: d.kind, ttl: d.ttl !== undefined };
}

/** `record[name]` if it is the record's own: a state named "constructor" is not Object's. */
function ownValue<T>(record: Readonly<Record<string, T>>, name: string): T | undefined {
  return Object.hasOwn(record, name) ? record[name] : undefined;
}

/** The state layout of every keyed operator of a plan. */
export function operatorSchemas(plan: PipelinePlan): OperatorSchema[] {
  return plan.operators.map((op) => {
    const state: Record<string, StateSchema> = {};
    for (const [name, d] of Object.entries(op.fn.state ?? {})) state[name] = schemaOf(d);
    return {
      uid: op.uid,
      kind: op.kind,
      ...(op.kind === 'window' && op.node.windowKind !== undefined ? { window: op.node.windowKind } : {}),
      ...(op.kind === 'window' && op.node.windowSize !== undefined ? { size: op.node.windowSize } : {}),
      state,
    };
  });
}

/** The operator uid of a state address (`${uid}/${JSON key}`), given the entry's key. */
export function operatorOfAddress(address: StateAddress, key: StateKey): string {
  const suffix = `/${JSON.stringify(key)}`;
  if (!address.endsWith(suffix)) {
    throw new StateFormatError(`state entry ${address} does not end with its key ${JSON.stringify(key)}`);
  }
  return address.slice(0, -suffix.length);
}

// ---- compatibility ------------------------------------------------------------------------------

export interface CompatibilityIssue {
  readonly operator: string;
  readonly message: string;
  /** Fatal issues refuse the restore (unless a migration is supplied); others are warnings. */
  readonly fatal: boolean;
}

export interface CompatibilityReport {
  readonly issues: readonly CompatibilityIssue[];
  /** Saved operators the pipeline no longer has (their state and timers would be dropped). */
  readonly dropped: readonly string[];
  readonly compatible: boolean;
}

const aligned = (w: string | undefined): boolean => w === 'tumbling' || w === 'sliding';

/**
 * Checks that state saved by `saved` operators can be read by `plan`: same uids, the same
 * operator and window kind (sessions and aligned windows lay state out differently), and for
 * every state name both keep, the same kind and TTL setting. New operators and new state names
 * start empty; a removed state name is dropped (a warning). A removed operator is fatal unless
 * `allowNonRestoredState` (Flink's flag of the same name).
 */
export function checkCompatibility(
  saved: readonly OperatorSchema[],
  plan: PipelinePlan,
  options: { allowNonRestoredState?: boolean } = {},
): CompatibilityReport {
  return compareOperatorSchemas(saved, operatorSchemas(plan), plan.name, options);
}

/**
 * checkCompatibility against the operator schemas of pipeline `name`. `savedIn` names where the
 * saved state is, for the messages. @default 'the savepoint'
 */
export function compareOperatorSchemas(
  saved: readonly OperatorSchema[],
  operators: readonly OperatorSchema[],
  name: string,
  options: { allowNonRestoredState?: boolean; savedIn?: string } = {},
): CompatibilityReport {
  const target = new Map(operators.map((o) => [o.uid, o]));
  const savedIn = options.savedIn ?? 'the savepoint';
  const issues: CompatibilityIssue[] = [];
  const dropped: string[] = [];
  for (const from of saved) {
    const to = target.get(from.uid);
    if (to === undefined) {
      dropped.push(from.uid);
      issues.push({
        operator: from.uid,
        fatal: options.allowNonRestoredState !== true,
        message: `operator "${from.uid}" has state in ${savedIn} but pipeline "${name}" has no operator with that uid (operators: ${[...target.keys()].join(', ') || 'none'})${options.allowNonRestoredState ? '; its state and timers are dropped' : ''}`,
      });
      continue;
    }
    if (from.kind === 'unknown') {
      issues.push({
        operator: from.uid,
        fatal: false,
        message: `${savedIn} does not record the state layout of operator "${from.uid}"; its state is restored as is`,
      });
      continue;
    }
    if (from.kind !== to.kind) {
      issues.push({
        operator: from.uid,
        fatal: true,
        message: `operator "${from.uid}" was a ${from.kind} operator and is now a ${to.kind} operator`,
      });
      continue;
    }
    if (from.kind === 'window' && from.window !== undefined && to.window !== undefined) {
      if (from.window !== to.window && !(aligned(from.window) && aligned(to.window))) {
        issues.push({
          operator: from.uid,
          fatal: true,
          message: `window operator "${from.uid}" changed from ${from.window} to ${to.window} windows, which keep state in another layout`,
        });
        continue;
      }
      if (from.size !== undefined && to.size !== undefined && from.size !== to.size) {
        // Flink keeps each window's end in its state and timers, so old windows fire as they were;
        // floe keeps the start only and would read a saved window as one of the new size.
        issues.push({
          operator: from.uid,
          fatal: true,
          message: `window operator "${from.uid}" changed its window size from ${from.size} to ${to.size} ms: open windows are saved by their start only, so they cannot be restored with another size; keep the size, or give the changed operator a new uid (it starts empty) and drop the old one's state with --allow-non-restored-state`,
        });
        continue;
      }
      if (from.window !== to.window) {
        issues.push({
          operator: from.uid,
          fatal: false,
          message: `window operator "${from.uid}" changed from ${from.window} to ${to.window} windows; open windows keep their saved start times`,
        });
      }
    }
    for (const [name, s] of Object.entries(from.state)) {
      const t = ownValue(to.state, name);
      if (t === undefined) {
        issues.push({
          operator: from.uid,
          fatal: false,
          message: `state "${name}" of operator "${from.uid}" is no longer declared; its saved values are dropped`,
        });
      } else if (t.kind !== s.kind) {
        issues.push({
          operator: from.uid,
          fatal: true,
          message: `state "${name}" of operator "${from.uid}" was ${s.kind} state and is now ${t.kind} state`,
        });
      } else if (t.ttl !== s.ttl) {
        issues.push({
          operator: from.uid,
          fatal: true,
          message: `state "${name}" of operator "${from.uid}" ${s.ttl ? 'had a TTL and has none' : 'had no TTL and has one'} now (TTL state stores write times)`,
        });
      }
    }
  }
  return { issues, dropped, compatible: !issues.some((i) => i.fatal) };
}

// ---- migration ----------------------------------------------------------------------------------

/**
 * One saved state entry as a migration sees it. `state` holds each named state decoded: a value
 * state's value, a map state's `[key, value]` pairs, a list state's items (TTL write times are
 * not shown; migrated TTL state counts as written at the restore).
 */
export interface SavedStateEntry {
  readonly operator: string;
  readonly key: StateKey;
  readonly state: Readonly<Record<string, unknown>>;
}

export interface MigrationContext {
  /** The saved layout of the entry's operator, if recorded. */
  readonly from: OperatorSchema | undefined;
  /** The layout of every operator of the new pipeline, by uid. */
  readonly to: ReadonlyMap<string, OperatorSchema>;
}

/**
 * Turns saved state into state of the new pipeline. Supplied as the default export of a
 * module (`floe replay --migration <module.ts>`): either this object, or just the `state`
 * function. Return undefined or null to drop an entry or timer; return several entries to
 * split one. Operators and state names must exist in the new pipeline.
 */
export interface StateMigration {
  state?(
    entry: SavedStateEntry,
    context: MigrationContext,
  ): SavedStateEntry | readonly SavedStateEntry[] | undefined | null;
  /** Maps a pending timer. @default keep timers of operators the new pipeline has */
  timer?(timer: TimerSpec): TimerSpec | undefined | null;
}

export type StateMigrationExport = StateMigration | NonNullable<StateMigration['state']>;

export function asStateMigration(value: unknown): StateMigration {
  if (typeof value === 'function') return { state: value as NonNullable<StateMigration['state']> };
  if (
    typeof value === 'object' &&
    value !== null &&
    (typeof (value as StateMigration).state === 'function' ||
      typeof (value as StateMigration).timer === 'function')
  ) {
    return value as StateMigration;
  }
  // An object's functions do not show in describeValue's JSON ({"stat": fn} reads as {}): name its keys.
  const keys = typeof value === 'object' && value !== null ? Object.keys(value) : [];
  const received =
    keys.length === 0
      ? describeValue(value)
      : `an object with ${keys.map((k) => `"${k}"`).join(', ')} and no state or timer function`;
  throw new StateFormatError(
    `a migration is a function (entry) => entry, or an object with state(entry) and/or timer(timer) methods; received ${received}`,
  );
}

function decodeCell(schema: StateSchema | undefined, cell: unknown): unknown {
  if (schema === undefined) return cell;
  const fail = (): never => {
    throw new StateFormatError(`saved ${schema.kind} state is malformed: ${describeValue(cell)}`);
  };
  if (!Array.isArray(cell)) return fail();
  if (schema.kind === 'value') return cell[0];
  if (schema.kind === 'map') {
    return cell.map((row) => (Array.isArray(row) ? [row[0], row[1]] : fail()));
  }
  return schema.ttl ? cell.map((row) => (Array.isArray(row) ? row[0] : fail())) : [...cell];
}

function encodeCell(schema: StateSchema, value: unknown, now: number, where: string): unknown {
  if (schema.kind === 'value') {
    if (value === undefined) return undefined;
    return schema.ttl ? [value, now] : [value];
  }
  if (!Array.isArray(value)) {
    throw new StateFormatError(
      `${where}: ${schema.kind} state must be ${schema.kind === 'map' ? 'an array of [key, value] pairs' : 'an array'}; the migration returned ${describeValue(value)}`,
    );
  }
  if (value.length === 0) return undefined;
  if (schema.kind === 'map') {
    return value.map((row) => {
      if (!Array.isArray(row) || (typeof row[0] !== 'string' && typeof row[0] !== 'number')) {
        throw new StateFormatError(
          `${where}: map state rows are [key, value] with a string or number key; the migration returned ${describeValue(row)}`,
        );
      }
      return schema.ttl ? [row[0], row[1], now] : [row[0], row[1]];
    });
  }
  return schema.ttl ? value.map((v) => [v, now]) : value;
}

/** Decodes a saved entry for a migration. */
export function decodeSavedEntry(
  address: StateAddress,
  valueText: string,
  schemas: ReadonlyMap<string, OperatorSchema>,
): SavedStateEntry {
  let raw: { k?: unknown; s?: unknown };
  try {
    raw = JSON.parse(valueText) as { k?: unknown; s?: unknown };
  } catch (error) {
    throw new StateFormatError(`state entry ${address} is not valid JSON: ${String(error)}`);
  }
  if (
    (typeof raw.k !== 'string' && typeof raw.k !== 'number') ||
    typeof raw.s !== 'object' ||
    raw.s === null
  ) {
    throw new StateFormatError(`state entry ${address} is not a {"k", "s"} object`);
  }
  const operator = operatorOfAddress(address, raw.k);
  const schema = schemas.get(operator);
  const state: Record<string, unknown> = {};
  for (const [name, cell] of Object.entries(raw.s as Record<string, unknown>)) {
    state[name] = decodeCell(
      schema === undefined || schema.kind === 'unknown' ? undefined : ownValue(schema.state, name),
      cell,
    );
  }
  return { operator, key: raw.k, state };
}

/** Encodes a migrated entry for the new pipeline: [address, value JSON], or undefined when empty. */
export function encodeMigratedEntry(
  entry: SavedStateEntry,
  schemas: ReadonlyMap<string, OperatorSchema>,
  now: number,
): [StateAddress, string] | undefined {
  const where = `migrated state of operator "${entry?.operator}" for key ${describeValue(entry?.key)}`;
  if (typeof entry !== 'object' || entry === null) {
    throw new StateFormatError(
      `the migration returned ${describeValue(entry)}; expected {operator, key, state}`,
    );
  }
  const schema = schemas.get(entry.operator);
  if (schema === undefined) {
    throw new StateFormatError(
      `${where}: the pipeline has no operator "${entry.operator}" (operators: ${[...schemas.keys()].join(', ') || 'none'})`,
    );
  }
  if (typeof entry.key !== 'string' && (typeof entry.key !== 'number' || !Number.isFinite(entry.key))) {
    throw new StateFormatError(`${where}: a key is a string or a finite number`);
  }
  // Anything else (a number, an array, a class instance, a missing state) has no named states:
  // it would be written as nothing, silently dropping the entry. Return undefined to drop one.
  if (!isPlainObject(entry.state)) {
    throw new StateFormatError(
      `${where}: "state" must be a plain object of named states ({ <state name>: value }); the migration returned ${describeValue(entry.state)}. Return undefined to drop an entry`,
    );
  }
  const s: Record<string, unknown> = {};
  for (const [name, value] of Object.entries(entry.state)) {
    const st = ownValue(schema.state, name);
    if (st === undefined) {
      throw new StateFormatError(
        `${where}: operator "${entry.operator}" declares no state "${name}" (state: ${Object.keys(schema.state).join(', ') || 'none'})`,
      );
    }
    const cell = encodeCell(st, value, now, where);
    if (cell === undefined) continue;
    // As a commit refuses it: the job would read back other state than the migration returned.
    const loss = jsonLoss(value, name);
    if (loss !== undefined) {
      throw new StateFormatError(
        `${where}: ${loss}; a migration returns JSON state (plain objects, arrays, strings, finite numbers, booleans, null)`,
      );
    }
    s[name] = cell;
  }
  if (Object.keys(s).length === 0) return undefined;
  const address = `${entry.operator}/${JSON.stringify(entry.key)}`;
  return [address, JSON.stringify({ k: entry.key, s })];
}

function isPlainObject(value: unknown): value is Record<string, unknown> {
  if (typeof value !== 'object' || value === null) return false;
  const proto = Object.getPrototypeOf(value) as unknown;
  return proto === Object.prototype || proto === null;
}

/**
 * Checks a timer a migration's timer() returned, as a checkpoint stores it and a shard task
 * restores it (the rules of deserializeCheckpoint and ShardTask's checkTime/checkNamespace):
 * an operator of the new pipeline, 'event' or 'processing', a whole-millisecond time within
 * ±MAX_TIMER_TIME or ±Infinity, a string or finite-number key, a string or finite-number
 * namespace. Returns the timer with only those fields; throws a StateFormatError saying `where`.
 */
export function checkMigratedTimer(
  timer: unknown,
  schemas: ReadonlyMap<string, OperatorSchema>,
  where: string,
): TimerSpec {
  if (!isPlainObject(timer)) {
    throw new StateFormatError(
      `${where}: the migration's timer() returned ${describeValue(timer)}; expected {operator, domain, time, key, namespace}, or undefined to drop the timer`,
    );
  }
  const t = timer as Partial<Record<keyof TimerSpec, unknown>>;
  const fail = (what: string, value: unknown): never => {
    throw new StateFormatError(
      `${where}: the migration's timer() returned a timer whose ${what}; received ${describeValue(value)}`,
    );
  };
  if (typeof t.operator !== 'string' || !schemas.has(t.operator)) {
    fail(
      `operator is not one of the pipeline's (operators: ${[...schemas.keys()].join(', ') || 'none'})`,
      t.operator,
    );
  }
  if (t.domain !== 'event' && t.domain !== 'processing')
    fail('domain is not "event" or "processing"', t.domain);
  const time = t.time;
  if (
    typeof time !== 'number' ||
    !(Number.isInteger(time) ? Math.abs(time) <= MAX_TIMER_TIME : Math.abs(time) === Number.POSITIVE_INFINITY)
  ) {
    fail(`time is not whole epoch milliseconds within ±${MAX_TIMER_TIME}, or ±Infinity`, time);
  }
  if (typeof t.key !== 'string' && (typeof t.key !== 'number' || !Number.isFinite(t.key))) {
    fail('key is not a string or a finite number', t.key);
  }
  if (typeof t.namespace !== 'string' && (typeof t.namespace !== 'number' || !Number.isFinite(t.namespace))) {
    fail('namespace is not a string or a finite number', t.namespace);
  }
  return {
    operator: t.operator as string,
    domain: t.domain as TimerSpec['domain'],
    time: time as number,
    key: t.key as string | number,
    namespace: t.namespace as string | number,
  };
}

// ---- state files --------------------------------------------------------------------------------

export interface EncodedStateFile {
  readonly data: Uint8Array;
  readonly file: SavepointFile;
}

/** One state file: gzip of NDJSON lines {"a": address, "v": <entry JSON>}, with its sha256. */
export function encodeStateFile(
  name: string,
  entries: ReadonlyArray<readonly [StateAddress, string]>,
): EncodedStateFile {
  let text = '';
  for (const [address, value] of entries) text += `{"a":${JSON.stringify(address)},"v":${value}}\n`;
  const data = gzipSync(text, { level: 6 });
  return { data, file: { name, entries: entries.length, bytes: data.byteLength, sha256: sha256(data) } };
}

/** Verifies a state file against its manifest entry (size, sha256, decompression, line count). */
export function decodeStateFile(
  data: Uint8Array | undefined,
  file: SavepointFile,
  where: string,
): Array<[StateAddress, string]> {
  if (data === undefined) {
    throw new StateFormatError(`${where} is missing; the savepoint is incomplete or was damaged`);
  }
  if (data.byteLength !== file.bytes || sha256(data) !== file.sha256) {
    throw new StateFormatError(
      `${where} is corrupted: its sha256 or size does not match the manifest (expected ${file.bytes} bytes, sha256 ${file.sha256.slice(0, 12)}…; found ${data.byteLength} bytes, sha256 ${sha256(data).slice(0, 12)}…)`,
    );
  }
  let text: string;
  try {
    text = gunzipSync(data).toString('utf8');
  } catch (error) {
    throw new StateFormatError(`${where} is not a valid gzip file: ${String(error)}`);
  }
  const out: Array<[StateAddress, string]> = [];
  let start = 0;
  let line = 0;
  while (start < text.length) {
    const end = text.indexOf('\n', start);
    const stop = end === -1 ? text.length : end;
    line++;
    if (stop > start) {
      let row: { a?: unknown; v?: unknown };
      try {
        row = JSON.parse(text.slice(start, stop)) as { a?: unknown; v?: unknown };
      } catch (error) {
        throw new StateFormatError(`${where}, line ${line}: not valid JSON (${String(error)})`);
      }
      if (typeof row.a !== 'string' || typeof row.v !== 'object' || row.v === null) {
        throw new StateFormatError(`${where}, line ${line}: expected {"a": address, "v": entry}`);
      }
      out.push([row.a, JSON.stringify(row.v)]);
    }
    start = stop + 1;
  }
  if (out.length !== file.entries) {
    throw new StateFormatError(`${where} has ${out.length} entries; the manifest says ${file.entries}`);
  }
  return out;
}

// ---- manifest -----------------------------------------------------------------------------------

/** The manifest with its checksum filled in. */
export function sealManifest(manifest: Omit<SavepointManifest, 'checksum'>): SavepointManifest {
  const body = { ...manifest, checksum: '' };
  return { ...manifest, checksum: sha256(JSON.stringify(body)) };
}

export function serializeManifest(manifest: SavepointManifest): string {
  return `${JSON.stringify(manifest, null, 2)}\n`;
}

/** Parses and validates a manifest; every problem is a StateFormatError naming `where`. */
export function parseManifest(text: string, where: string): SavepointManifest {
  let raw: unknown;
  try {
    raw = JSON.parse(text);
  } catch (error) {
    throw new StateFormatError(`${where} is not valid JSON (${String(error)}); the savepoint is damaged`);
  }
  const fail = (what: string): never => {
    throw new StateFormatError(`${where} is invalid: ${what}`);
  };
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return fail('not a JSON object');
  const m = raw as Record<string, unknown>;
  if (m.format !== SAVEPOINT_FORMAT) {
    throw new StateFormatError(
      `${where} has savepoint format ${describeValue(m.format)}; this floe reads format ${SAVEPOINT_FORMAT}`,
    );
  }
  if (typeof m.checksum !== 'string') fail('"checksum" is missing');
  const expected = sha256(JSON.stringify({ ...m, checksum: '' }));
  if (m.checksum !== expected) {
    throw new StateFormatError(`${where} is corrupted: its checksum does not match its content`);
  }
  if (m.stateFormat !== STATE_FORMAT_VERSION) {
    throw new StateFormatError(
      `${where} holds state format ${describeValue(m.stateFormat)}; this floe reads state format ${STATE_FORMAT_VERSION}`,
    );
  }
  if (!READABLE_CHECKPOINT_FORMATS.includes(m.checkpointFormat as number)) {
    throw new StateFormatError(
      `${where} holds checkpoint format ${describeValue(m.checkpointFormat)}; this floe reads formats ${readableCheckpointFormats()}`,
    );
  }
  for (const field of ['id', 'job', 'stream', 'backend'] as const) {
    if (typeof m[field] !== 'string') fail(`"${field}" is not a string`);
  }
  checkSavepointId(m.id);
  for (const field of ['createdAt', 'generation', 'entries', 'bytes'] as const) {
    if (typeof m[field] !== 'number') fail(`"${field}" is not a number`);
  }
  const p = m.pipeline as Record<string, unknown> | undefined;
  if (typeof p !== 'object' || p === null || typeof p.name !== 'string' || typeof p.version !== 'string')
    fail('"pipeline" is not {name, version}');
  if (!Array.isArray(m.operators)) fail('"operators" is not an array');
  for (const o of m.operators as unknown[]) {
    const op = o as Record<string, unknown>;
    if (typeof op?.uid !== 'string' || typeof op.state !== 'object' || op.state === null)
      fail(`operator ${describeValue(o)} is malformed`);
  }
  if (!Array.isArray(m.shards)) fail('"shards" is not an array');
  for (const s of m.shards as unknown[]) {
    const shard = s as Record<string, unknown>;
    let checkpoint: ShardCheckpoint | undefined;
    try {
      checkpoint = deserializeCheckpoint(JSON.stringify(shard?.checkpoint));
    } catch (error) {
      fail(`a shard checkpoint is malformed (${(error as Error).message})`);
    }
    // Savepoints are self-contained: timers inline, never in timer chunks (which are not exported).
    if (checkpoint?.timerLog !== undefined)
      fail(`the checkpoint of shard ${checkpoint.shardId} has a timer log`);
    if (shard.outbox !== undefined && !isFileEntry(shard.outbox))
      fail(`the outbox file of shard ${checkpoint?.shardId} is malformed: ${describeValue(shard.outbox)}`);
  }
  if (!Array.isArray(m.files)) fail('"files" is not an array');
  for (const f of m.files as unknown[]) {
    if (!isFileEntry(f)) fail(`file ${describeValue(f)} is malformed`);
  }
  return raw as SavepointManifest;
}

function isFileEntry(f: unknown): f is SavepointFile {
  const file = f as Record<string, unknown> | null;
  return (
    typeof file?.name === 'string' &&
    /^[A-Za-z0-9._-]+$/.test(file.name) &&
    typeof file.sha256 === 'string' &&
    typeof file.bytes === 'number' &&
    typeof file.entries === 'number'
  );
}

/** The checkpoints of a manifest. */
export function manifestCheckpoints(manifest: SavepointManifest): ShardCheckpoint[] {
  return manifest.shards.map((s) => deserializeCheckpoint(JSON.stringify(s.checkpoint)));
}

/** A checkpoint in the manifest's JSON form (its timers inline: see withInlineTimers). */
export function checkpointJson(checkpoint: ShardCheckpoint): Record<string, unknown> {
  if (checkpoint.timerLog !== undefined) {
    throw new Error(
      `internal: the savepoint checkpoint of shard ${checkpoint.shardId} still has a timer log`,
    );
  }
  return JSON.parse(serializeCheckpoint(checkpoint)) as Record<string, unknown>;
}

// ---- retention ----------------------------------------------------------------------------------

/**
 * Whether the records after a saved position are still readable, given the position of the
 * oldest record the stream still holds for the shard (undefined: the shard holds none) and
 * whether the shard is still listed. Returns the reason they are not, or undefined.
 * `next` is the first record after the position when the savepoint was taken, if known: if the
 * oldest available record is at or before it, nothing after the position was trimmed.
 */
export function trimmedReason(
  shard: {
    readonly shardId: string;
    readonly position: string | undefined;
    readonly next?: string;
    readonly finished: boolean;
  },
  stream: { readonly listed: boolean; readonly oldest: string | undefined },
  compare: (a: string, b: string) => number,
): string | undefined {
  if (shard.finished) return undefined;
  if (!stream.listed) {
    return `shard ${shard.shardId} is no longer in the stream (closed and expired after the stream's retention), but the savepoint has not finished reading it`;
  }
  if (shard.position === undefined) return undefined;
  if (stream.oldest === undefined) {
    return shard.next === undefined
      ? undefined
      : `the records of shard ${shard.shardId} after position ${shard.position} (from ${shard.next}) were trimmed by the stream's retention`;
  }
  if (compare(stream.oldest, shard.position) <= 0) return undefined;
  if (shard.next !== undefined && compare(stream.oldest, shard.next) <= 0) return undefined;
  return `the oldest record of shard ${shard.shardId} still in the stream is ${stream.oldest}, after the savepoint position ${shard.position}${shard.next === undefined ? '' : ` and its next record ${shard.next}`}: records after the savepoint were trimmed by the stream's retention`;
}
