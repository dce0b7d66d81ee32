/**
 * Keyed state: descriptors users declare, the handles they use, and the per-key storage the
 * engine loads, journals and serializes. State is scoped to (operator, key); handles act on
 * the key currently being processed. Values must be JSON-serializable.
 */
import {
  describeValue,
  PipelineDefinitionError,
  StateFormatError,
  StateSerializationError,
} from './errors.ts';
import { Journal, type Undoable } from './journal.ts';
import { jsonLoss } from './json-loss.ts';
import type { StateAddress } from './ports.ts';
import { checkDuration, type Millis } from './time.ts';
import type { QueuedTimer } from './timers.ts';

export type StateKey = string | number;

interface DescriptorBase {
  /** Processing-time TTL since the last write; expired values read as absent. */
  readonly ttl: Millis | undefined;
}
export interface ValueStateDescriptor<T> extends DescriptorBase {
  readonly kind: 'value';
  readonly __type?: T;
}
export interface MapStateDescriptor<K extends StateKey, V> extends DescriptorBase {
  readonly kind: 'map';
  /** In-memory layout; the stored form is the same for both. @default 'per-key' */
  readonly layout: MapStateLayout;
  readonly __type?: [K, V];
}

/**
 * How a map state is held in memory. 'per-key': one map per stream key (any number of map
 * keys). 'by-map-key': one table per map key, shared by all stream keys, for map keys that
 * many stream keys use at once and that are few at any time, such as window starts: a read is
 * one lookup in a table that stays in the CPU cache, but listing one stream key's entries
 * visits every live map key.
 */
export type MapStateLayout = 'per-key' | 'by-map-key';
export interface ListStateDescriptor<T> extends DescriptorBase {
  readonly kind: 'list';
  readonly __type?: T;
}
export type StateDescriptor =
  | ValueStateDescriptor<unknown>
  | MapStateDescriptor<StateKey, unknown>
  | ListStateDescriptor<unknown>;
export type StateSpec = Record<string, StateDescriptor>;

function ttlOption(options: { ttl?: Millis } | undefined): Millis | undefined {
  const ttl = options?.ttl;
  return ttl === undefined ? undefined : checkDuration('state ttl', ttl, 1);
}

export function valueState<T>(options?: { ttl?: Millis }): ValueStateDescriptor<T> {
  return { kind: 'value', ttl: ttlOption(options) };
}
/**
 * The options of mapState: a `ttl` only with the 'per-key' layout (a union, so that the compiler
 * refuses `{ layout: 'by-map-key', ttl }`, which mapState refuses when the pipeline is built).
 */
export type MapStateOptions =
  | {
      ttl?: Millis;
      /** @default 'per-key' */
      layout?: 'per-key';
    }
  | {
      /** Expiring entries need the 'per-key' layout. */
      ttl?: undefined;
      layout: 'by-map-key';
    };

export function mapState<K extends StateKey, V>(options?: MapStateOptions): MapStateDescriptor<K, V> {
  const layout = options?.layout ?? 'per-key';
  if (layout !== 'per-key' && layout !== 'by-map-key') {
    throw new PipelineDefinitionError(
      `map state layout must be 'per-key' or 'by-map-key'; received ${describeValue(layout)}`,
    );
  }
  const ttl = ttlOption(options);
  if (layout === 'by-map-key' && ttl !== undefined) {
    throw new PipelineDefinitionError(
      "map state with layout 'by-map-key' does not support a ttl; use the default 'per-key' layout for expiring entries",
    );
  }
  return { kind: 'map', ttl, layout };
}
export function listState<T>(options?: { ttl?: Millis }): ListStateDescriptor<T> {
  return { kind: 'list', ttl: ttlOption(options) };
}

export interface ValueState<T> {
  value(): T | undefined;
  update(value: T): void;
  clear(): void;
}
export interface MapState<K extends StateKey, V> {
  get(key: K): V | undefined;
  has(key: K): boolean;
  put(key: K, value: V): void;
  remove(key: K): void;
  entries(): Array<[K, V]>;
  keys(): K[];
  values(): V[];
  readonly size: number;
  isEmpty(): boolean;
  clear(): void;
}
export interface ListState<T> {
  get(): readonly T[];
  add(value: T): void;
  update(values: readonly T[]): void;
  clear(): void;
}

export type StateHandles<S extends StateSpec> = {
  [N in keyof S]: S[N] extends ValueStateDescriptor<infer T>
    ? ValueState<T>
    : S[N] extends MapStateDescriptor<infer K, infer V>
      ? MapState<K, V>
      : S[N] extends ListStateDescriptor<infer T>
        ? ListState<T>
        : never;
};

interface ValueCell {
  v: unknown;
  t: number;
}
/** A map state cell is the map itself (one indirection less on the hot path). */
class MapCell extends Map<StateKey, unknown> {
  constructor(
    /** Write times per map key, only when a TTL is set. */
    readonly t: Map<StateKey, number> | undefined,
  ) {
    super();
  }
}
interface ListCell {
  items: unknown[];
  t: number[] | undefined;
}
type Cell = ValueCell | MapCell | ListCell | undefined;

/** All state of one key in one operator: the unit loaded, cached and written. */
export class KeyEntry {
  /** The state address and the key as JSON, computed once. */
  address: StateAddress | undefined = undefined;
  json: string | undefined = undefined;
  /** `{"k":<key>,"s":{"<name>":` for operators with a single map state (shared, or per key without TTL). */
  head: string | undefined = undefined;
  /** `<head>[[<rowKey>,`: the text before the value when the entry has that one row. */
  rowHead: string | undefined = undefined;
  rowKey: StateKey | undefined = undefined;
  constructor(
    readonly key: StateKey,
    /**
     * The key's index into its operator's 'by-map-key' tables, unique among cached keys (a
     * dropped key's slot is given to the next new key).
     */
    readonly slot: number,
    readonly cells: Cell[],
    /**
     * Whether the store may hold a value for this key (it was read with one, or a mutation with a
     * value was taken since). A key without one whose state is empty again at the end of a
     * commit (a window that opened and fired within it) needs no write at all.
     */
    public stored = true,
  ) {}
}

/** The keyed state of one operator inside one shard task. */
export class KeyedStateBackend {
  /**
   * The cached keys, each with its slot; `entries[slot]` is its entry. The map holds slots, not
   * entries, so processing an element (prefetch finds its slot) never loads its key's entry: at
   * 10k keys, scattered over the heap, each such load is a cache miss of its own.
   */
  readonly cache = new Map<StateKey, number>();
  /** Entries by slot (undefined: a free slot). */
  private readonly entries: Array<KeyEntry | undefined> = [];
  readonly dirty: KeyEntry[] = [];
  current!: KeyEntry;
  /** current.key and current.slot, kept here so reads and writes need no load of the entry. */
  currentKey: StateKey = '';
  currentSlot = 0;
  now = 0;
  /** The checked pass: user functions get copies of object state values (see readState). */
  copyOnRead = false;
  private readonly names: string[];
  private readonly quotedNames: string[];
  private readonly descriptors: StateDescriptor[];
  /** Per state: the shared table of a 'by-map-key' map state (its cells stay undefined). */
  private readonly tables: Array<SharedMapTable | undefined>;
  /** Whether the operator's only state is a 'per-key' map state without TTL. */
  private readonly onePlainMap: boolean;
  /** Slots of dropped keys, for reuse; `slots` is one more than the highest slot handed out. */
  private readonly freeSlots: number[] = [];
  private slots = 0;
  /** Bumped whenever a cached key is dropped (its slot may go to another key). */
  dropEpoch = 0;
  /**
   * Per slot, 1 or 0: whether its key changed since the mutations were last taken (it is in
   * `dirty`), and whether it was used since the last eviction sweep (evict spares it once).
   * Kept by slot rather than on the entries (see `cache`).
   */
  private readonly dirtySlots: number[] = [];
  private readonly usedSlots: number[] = [];

  constructor(
    readonly uid: string,
    spec: StateSpec,
    readonly journal: Journal,
  ) {
    this.names = Object.keys(spec);
    this.quotedNames = this.names.map((n) => JSON.stringify(n));
    this.descriptors = this.names.map((n) => spec[n]!);
    this.tables = this.descriptors.map((d) =>
      d.kind === 'map' && d.layout === 'by-map-key' ? new SharedMapTable() : undefined,
    );
    const only = this.descriptors.length === 1 ? this.descriptors[0] : undefined;
    this.onePlainMap = only?.kind === 'map' && only.layout === 'per-key' && only.ttl === undefined;
  }

  static address(uid: string, key: StateKey): StateAddress {
    return `${uid}/${JSON.stringify(key)}`;
  }

  address(key: StateKey): StateAddress {
    return KeyedStateBackend.address(this.uid, key);
  }

  handles<S extends StateSpec>(): StateHandles<S> {
    const out: Record<string, unknown> = {};
    this.names.forEach((name, i) => {
      const d = this.descriptors[i]!;
      const table = this.tables[i];
      out[name] =
        d.kind === 'value'
          ? new ValueStateHandle(this, i, d.ttl)
          : table !== undefined
            ? new SharedMapStateHandle(this, table)
            : d.kind === 'map'
              ? new MapStateHandle(this, i, d.ttl)
              : new ListStateHandle(this, i, d.ttl);
    });
    return out as StateHandles<S>;
  }

  /** Makes `key` current, creating an empty entry when the key has no state yet. */
  setCurrentKey(key: StateKey): KeyEntry {
    let slot = this.cache.get(key);
    if (slot === undefined) {
      slot = this.takeSlot();
      this.entries[slot] = new KeyEntry(key, slot, new Array(this.names.length).fill(undefined));
      this.cache.set(key, slot);
    }
    this.enter(key, slot);
    return this.current;
  }

  /** Makes the cached key `key`, of slot `slot`, current. */
  enter(key: StateKey, slot: number): void {
    this.current = this.entries[slot]!;
    this.currentKey = key;
    this.currentSlot = slot;
    this.usedSlots[slot] = 1;
  }

  /** The slot of `timer`'s key if it is cached (the timer is of this operator), else undefined. */
  timerSlot(timer: QueuedTimer): number | undefined {
    return timer.slot >= 0 && timer.slotEpoch === this.dropEpoch ? timer.slot : this.cache.get(timer.key);
  }

  /** The cached entry of `key`, if any. */
  entry(key: StateKey): KeyEntry | undefined {
    const slot = this.cache.get(key);
    return slot === undefined ? undefined : this.entries[slot];
  }

  isCached(key: StateKey): boolean {
    return this.cache.has(key);
  }

  /** Marks the current key changed. */
  touch(): void {
    const slot = this.currentSlot;
    if (this.dirtySlots[slot] === 0) {
      this.dirtySlots[slot] = 1;
      this.dirty.push(this.current);
    }
  }

  /** Sets a cell of the current key. */
  setCell(index: number, cell: Cell): void {
    const cells = this.current.cells;
    this.journal.recordSlot(cells, index);
    cells[index] = cell;
    this.touch();
  }

  /** How many slots were handed out: one more than the highest in use. */
  get slotCount(): number {
    return this.slots;
  }

  private takeSlot(): number {
    const slot = this.freeSlots.pop() ?? this.slots++;
    // In order: a new slot is the arrays' next element, so they stay packed.
    this.entries[slot] = undefined;
    this.dirtySlots[slot] = 0;
    this.usedSlots[slot] = 1;
    return slot;
  }

  /** Installs an entry read from the store (or an empty one if absent). */
  load(key: StateKey, serialized: string | undefined): void {
    const cells: Cell[] = new Array(this.names.length).fill(undefined);
    const slot = this.takeSlot();
    if (serialized !== undefined) {
      try {
        this.decode(key, serialized, slot, cells);
      } catch (error) {
        // A corrupt entry leaves nothing behind: the key stays uncached and its slot is free.
        for (const table of this.tables) table?.forget(slot);
        this.freeSlots.push(slot);
        throw error;
      }
    }
    this.entries[slot] = new KeyEntry(key, slot, cells, serialized !== undefined);
    this.cache.set(key, slot);
  }

  /** Decodes a stored entry into `cells` and the shared tables' `slot`, checking its shape. */
  private decode(key: StateKey, serialized: string, slot: number, cells: Cell[]): void {
    const corrupt = (what: string): StateFormatError =>
      new StateFormatError(
        `state entry ${this.address(key)} is corrupted: ${what}; received ${serialized.slice(0, 120)}. ` +
          'It was not written by this version of floe, or was changed by hand: restore it from a savepoint.',
      );
    let raw: unknown;
    try {
      raw = JSON.parse(serialized);
    } catch (error) {
      throw new StateFormatError(`state entry ${this.address(key)} is not valid JSON: ${String(error)}`);
    }
    const states = isRecord(raw) ? raw.s : undefined;
    if (!isRecord(states)) throw corrupt('expected {"k": <key>, "s": {<state name>: <value>}}');
    this.names.forEach((name, i) => {
      // Own properties only: a state named "constructor" must not find Object.prototype's.
      const json = Object.hasOwn(states, name) ? states[name] : undefined;
      if (json === undefined) return;
      const d = this.descriptors[i]!;
      const shape = cellShapeError(d, json);
      if (shape !== undefined) throw corrupt(`state "${name}" (${d.kind} state) ${shape}`);
      const table = this.tables[i];
      if (table === undefined) cells[i] = decodeCell(d, json);
      else table.load(slot, json as Array<[StateKey, unknown]>, this.slots);
    });
  }

  /**
   * Serialized entry, or null when the key holds no live state (delete it). The text is
   * exactly JSON.stringify({ k: key, s: { [name]: encodedCell } }); map cells without TTL,
   * the window operators' state, are written without building the intermediate arrays.
   */
  serialize(entry: KeyEntry): string | null {
    let text = '';
    try {
      const only = this.tables.length === 1 ? this.tables[0] : undefined;
      if (only !== undefined) {
        // The window operators' state, one shared map table. Commits serialize most keys again
        // and again with one live window: the text up to the window's value is built once per
        // (key, window), so a commit adds two string pieces per changed key.
        const slot = entry.slot;
        let rows = 0;
        let mk: StateKey | undefined;
        let v: unknown;
        for (const [m, column] of only) {
          const value = column.get(slot);
          if (value === undefined) continue;
          if (++rows > 1) break;
          mk = m;
          v = value;
        }
        if (rows === 0) return null;
        if (rows > 1) return `${this.head(entry)}${only.json(slot)!}}}`;
        return this.oneRowJson(entry, mk!, v);
      }
      if (this.onePlainMap) {
        // The session windows' state, one map per key without TTL: most keys hold one session,
        // whose start stays while it grows, so its row is written as above.
        const cell = entry.cells[0] as MapCell | undefined;
        if (cell === undefined || cell.size === 0) return null;
        if (cell.size > 1) return `${this.head(entry)}${mapCellJson(cell)!}}}`;
        cell.forEach(takeRow);
        const v = rowValue;
        rowValue = undefined;
        return this.oneRowJson(entry, rowKey, v);
      }
      for (let i = 0; i < this.names.length; i++) {
        const d = this.descriptors[i]!;
        const table = this.tables[i];
        let json: string | undefined;
        // A shared table's cell is always empty: do not load it (a cache miss per key).
        const cell = table === undefined ? entry.cells[i] : undefined;
        if (table !== undefined) {
          json = table.json(entry.slot);
        } else if (cell === undefined) {
          continue;
        } else if (d.kind === 'map' && d.ttl === undefined) {
          json = mapCellJson(cell as MapCell);
        } else {
          const encoded = encodeCell(d, cell, this.now);
          if (encoded !== undefined) {
            if (jsonLoss(encoded) !== undefined) throw NOT_JSON;
            json = JSON.stringify(encoded);
          }
        }
        if (json === undefined) continue;
        text += `${text === '' ? '' : ','}${this.quotedNames[i]!}:${json}`;
      }
      if (text === '') return null;
      entry.json ??= JSON.stringify(entry.key);
      return `{"k":${entry.json},"s":{${text}}}`;
    } catch (error) {
      // The error path only: find what is not JSON, with the state's name, for the message.
      const what = this.jsonLossIn(entry) ?? String(error);
      throw new StateSerializationError(
        `state of operator "${this.uid}" for key ${describeValue(entry.key)} is not JSON-serializable: ${what}. A restart would read it back changed; keep state values to plain objects, arrays, strings, finite numbers, booleans and null`,
      );
    }
  }

  /** `{"k":<key>,"s":{"<name>":`, for operators with a single state. */
  private head(entry: KeyEntry): string {
    entry.head ??= `{"k":${JSON.stringify(entry.key)},"s":{${this.quotedNames[0]!}:`;
    return entry.head;
  }

  /** The entry's text when its single map state has the one row (mk, v). */
  private oneRowJson(entry: KeyEntry, mk: StateKey, v: unknown): string {
    if (entry.rowKey !== mk || entry.rowHead === undefined) {
      entry.rowKey = mk;
      entry.rowHead = `${this.head(entry)}[[${itemJson(mk)},`;
    }
    return `${entry.rowHead}${itemJson(v)}]]}}`;
  }

  /** What in `entry`'s state JSON would not give back unchanged (see jsonLoss), by state name. */
  private jsonLossIn(entry: KeyEntry): string | undefined {
    for (let i = 0; i < this.names.length; i++) {
      const name = this.names[i]!;
      const table = this.tables[i];
      const rows: Array<[string, unknown]> = [];
      if (table !== undefined) {
        for (const [mk, column] of table) {
          const v = column.get(entry.slot);
          if (v !== undefined) rows.push([`${name}[${JSON.stringify(mk)}]`, v]);
        }
      } else {
        const cell = entry.cells[i];
        if (cell === undefined) continue;
        const d = this.descriptors[i]!;
        if (d.kind === 'value') rows.push([name, (cell as ValueCell).v]);
        else if (d.kind === 'map')
          for (const [k, v] of cell as MapCell) rows.push([`${name}[${JSON.stringify(k)}]`, v]);
        else {
          const items = (cell as ListCell).items;
          for (let j = 0; j < items.length; j++) rows.push([`${name}[${j}]`, items[j]]);
        }
      }
      for (const [path, v] of rows) {
        const loss = jsonLoss(v, path);
        if (loss !== undefined) return loss;
      }
    }
    return undefined;
  }

  /**
   * Drops cached keys once more than `limit` are cached, down to three quarters of it: first
   * the keys not used since the previous sweep (each used key is spared once, a second chance),
   * then the longest cached. A dropped key is read from the store again when a batch or a timer
   * needs it, so this is only valid when the store holds every change: right after the mutations
   * were taken, with the caller committing them before the next batch. Returns how many keys
   * were dropped.
   */
  evict(limit: number): number {
    const cache = this.cache;
    if (cache.size <= limit) return 0;
    if (this.dirty.length > 0) {
      throw new Error(`internal: operator "${this.uid}" evicts state with uncommitted changes`);
    }
    const target = Math.floor(limit * 0.75);
    const before = cache.size;
    for (const [key, slot] of cache) {
      if (cache.size <= target) break;
      if (this.usedSlots[slot] === 1) this.usedSlots[slot] = 0;
      else this.drop(key, slot);
    }
    for (const [key, slot] of cache) {
      if (cache.size <= target) break;
      this.drop(key, slot);
    }
    return before - cache.size;
  }

  private drop(key: StateKey, slot: number): void {
    this.dropEpoch++;
    this.cache.delete(key);
    this.entries[slot] = undefined;
    for (const table of this.tables) table?.forget(slot);
    this.freeSlots.push(slot);
  }

  /** Drains the dirty list into `out`: one mutation per changed key. */
  takeMutations(out: Array<{ address: StateAddress; value: string | null }> = []): Array<{
    address: StateAddress;
    value: string | null;
  }> {
    const dirty = this.dirty;
    for (let i = 0; i < dirty.length; i++) {
      const entry = dirty[i]!;
      this.dirtySlots[entry.slot] = 0;
      entry.address ??= this.address(entry.key);
      const value = this.serialize(entry);
      // Born and gone within this commit: the store has nothing to delete.
      if (value === null && !entry.stored) continue;
      entry.stored = value !== null;
      out.push({ address: entry.address, value });
    }
    dirty.length = 0;
    return out;
  }

  /** @internal How a 'by-map-key' map state is held: its columns, and how many are dense. */
  sharedTableLayout(state: string): { columns: number; dense: number } | undefined {
    return this.tables[this.names.indexOf(state)]?.layout();
  }

  /** Inspection for tests and the test driver: JSON view of one key's state. */
  inspect(key: StateKey): Record<string, unknown> | undefined {
    const entry = this.entry(key);
    if (entry === undefined) return undefined;
    const text = this.serialize(entry);
    return text === null ? undefined : (JSON.parse(text).s as Record<string, unknown>);
  }
}

const expired = (t: number, ttl: number | undefined, now: number): boolean =>
  ttl !== undefined && now >= t + ttl;

// A small direct-mapped cache of number -> JSON text: map keys such as window starts repeat
// across keys and batches, and formatting a 13-digit number is not free.
const numberCacheKeys = new Float64Array(512).fill(Number.NaN);
const numberCacheText: string[] = new Array(512).fill('');

/** Thrown where a state value is not JSON; serialize's message says what and where. */
const NOT_JSON = new TypeError('a state value is not JSON');

/** JSON of one value inside an array; throws NOT_JSON for what JSON would change (jsonLoss). */
function itemJson(v: unknown): string {
  if (typeof v === 'number') {
    if (!Number.isFinite(v)) throw NOT_JSON;
    const slot = Math.imul(v | 0, 0x9e3779b1) >>> 23;
    if (numberCacheKeys[slot] === v) return numberCacheText[slot]!; // -0 and 0 both print as "0"
    const text = String(v);
    numberCacheKeys[slot] = v;
    numberCacheText[slot] = text;
    return text;
  }
  if (typeof v === 'string') return JSON.stringify(v);
  if (jsonLoss(v) !== undefined) throw NOT_JSON;
  return JSON.stringify(v);
}

// The row takeRow saw (serialize of a map with one row), read without allocating an entry.
let rowKey: StateKey = '';
let rowValue: unknown;
function takeRow(v: unknown, k: StateKey): void {
  rowKey = k;
  rowValue = v;
}

// mapCellJson's accumulator: Map.forEach with a shared callback allocates no entry arrays.
let mapJson = '';
function appendMapEntry(v: unknown, k: StateKey): void {
  mapJson += `${mapJson === '' ? '[[' : ',['}${itemJson(k)},${itemJson(v)}]`;
}

/** JSON.stringify(encodeCell(mapDescriptorWithoutTtl, cell)), without the intermediate arrays. */
function mapCellJson(m: Map<StateKey, unknown>): string | undefined {
  if (m.size === 0) return undefined;
  const outer = mapJson; // re-entrant if a value's toJSON serializes state (it should not)
  mapJson = '';
  try {
    m.forEach(appendMapEntry);
    return `${mapJson}]`;
  } finally {
    mapJson = outer;
  }
}

function encodeCell(d: StateDescriptor, cell: Cell, now: number): unknown {
  if (cell === undefined) return undefined;
  if (d.kind === 'value') {
    const c = cell as ValueCell;
    if (c.v === undefined || expired(c.t, d.ttl, now)) return undefined;
    return d.ttl === undefined ? [c.v] : [c.v, c.t];
  }
  if (d.kind === 'map') {
    const c = cell as MapCell;
    const out: unknown[] = [];
    for (const [k, v] of c) {
      if (d.ttl === undefined) out.push([k, v]);
      else {
        const t = c.t?.get(k) ?? 0;
        if (!expired(t, d.ttl, now)) out.push([k, v, t]);
      }
    }
    return out.length === 0 ? undefined : out;
  }
  const c = cell as ListCell;
  const out: unknown[] = [];
  c.items.forEach((v, i) => {
    if (d.ttl === undefined) out.push(v);
    else {
      const t = c.t?.[i] ?? 0;
      if (!expired(t, d.ttl, now)) out.push([v, t]);
    }
  });
  return out.length === 0 ? undefined : out;
}

const isRecord = (v: unknown): v is Record<string, unknown> =>
  typeof v === 'object' && v !== null && !Array.isArray(v);

/** Why `json` is not the stored form of a cell of `d` (see encodeCell), or undefined if it is. */
function cellShapeError(d: StateDescriptor, json: unknown): string | undefined {
  if (!Array.isArray(json)) return 'is not an array';
  if (d.kind === 'value') return json.length === 0 ? 'is an empty array' : undefined;
  // Map rows are [key, value] (+ write time with a TTL); TTL list items are [item, write time].
  const isMap = d.kind === 'map';
  if (!isMap && d.ttl === undefined) return undefined;
  const bad = json.findIndex(
    (row) =>
      !Array.isArray(row) ||
      row.length < 2 ||
      (isMap && typeof row[0] !== 'string' && typeof row[0] !== 'number'),
  );
  return bad < 0 ? undefined : `has a malformed entry at index ${bad}: ${JSON.stringify(json[bad])}`;
}

function decodeCell(d: StateDescriptor, json: unknown): Cell {
  if (d.kind === 'value') {
    const a = json as [unknown, number?];
    return { v: a[0], t: a[1] ?? 0 };
  }
  if (d.kind === 'map') {
    const rows = json as Array<[StateKey, unknown, number?]>;
    const t = d.ttl === undefined ? undefined : new Map<StateKey, number>();
    const m = new MapCell(t);
    for (const row of rows) {
      m.set(row[0], row[1]);
      t?.set(row[0], row[2] ?? 0);
    }
    return m;
  }
  const rows = json as unknown[];
  if (d.ttl === undefined) return { items: [...rows], t: undefined };
  const pairs = rows as Array<[unknown, number]>;
  return { items: pairs.map((p) => p[0]), t: pairs.map((p) => p[1]) };
}

class ValueStateHandle<T> implements ValueState<T> {
  constructor(
    private readonly rt: KeyedStateBackend,
    private readonly i: number,
    private readonly ttl: number | undefined,
  ) {}
  value(): T | undefined {
    const c = this.rt.current.cells[this.i] as ValueCell | undefined;
    if (c === undefined || expired(c.t, this.ttl, this.rt.now)) return undefined;
    return readState(this.rt, c.v as T);
  }
  update(value: T): void {
    if (value === undefined) {
      this.clear();
      return;
    }
    noteWrite(this.rt, value);
    this.rt.setCell(this.i, { v: value, t: this.rt.now });
  }
  clear(): void {
    if (this.rt.current.cells[this.i] !== undefined) this.rt.setCell(this.i, undefined);
  }
}

function checkMapKey(key: unknown): void {
  // Stored as JSON, where NaN and ±Infinity become null: the entry could not be read back.
  if (typeof key !== 'string' && (typeof key !== 'number' || !Number.isFinite(key))) {
    throw new StateSerializationError(
      `map state keys must be strings or finite numbers; received ${describeValue(key)}`,
    );
  }
}

const isObject = (value: unknown): value is object => typeof value === 'object' && value !== null;

/**
 * A deep copy through JSON: what the value becomes after a commit and a restart. Throws what
 * JSON.stringify throws (a cycle, a BigInt); a value JSON has no text for is returned as it is.
 */
export function jsonCopy<T>(value: T): T {
  const text = JSON.stringify(value);
  return text === undefined ? value : (JSON.parse(text) as T);
}

/**
 * A state value as a user function gets it. Objects are handed out by reference, so the journal
 * notes the read: a record that fails after changing one in place cannot be undone by restoring
 * references (RollbackNeedsReplayError). In the checked pass (copyOnRead) the function gets a
 * copy, as it would after a restart, so only its writes change state and its rollback is exact.
 */
function readState<T>(rt: KeyedStateBackend, value: T): T {
  if (!isObject(value)) return value;
  if (rt.copyOnRead) return jsonCopy(value);
  rt.journal.objectRead = true;
  return value;
}

/** Notes a write of an object: emitting it now would alias state (see OperatorRuntime.emit). */
function noteWrite(rt: KeyedStateBackend, value: unknown): void {
  if (isObject(value)) rt.journal.noteObjectWrite();
}

/** readState for the values of map entries (a new array of new pairs either way). */
function readEntries<K, V>(rt: KeyedStateBackend, entries: Array<[K, V]>): Array<[K, V]> {
  for (const e of entries) e[1] = readState(rt, e[1]);
  return entries;
}

/**
 * Internal: what floe's own operators use beside MapState. They never change a stored value in
 * place, so they read values as stored (without readState) and pass through readState
 * (`handOut`) only what they give to user functions, such as a window's accumulator.
 */
export interface StoredMapState<K extends StateKey, V> extends MapState<K, V> {
  /** The stored value, not passed through readState. */
  stored(key: K): V | undefined;
  /** The live entries as stored (new pairs), not passed through readState. */
  storedEntries(): Array<[K, V]>;
  /** Calls `fn` for each live entry as stored, in storedEntries' order, allocating no pairs. */
  forEachStored(fn: (value: V, key: K) => void): void;
  /** readState for a (part of a) stored value handed to a user function. */
  handOut<T>(value: T): T;
}

/**
 * has(), keys(), values(), size and isEmpty() of a map state handle, and the StoredMapState
 * methods. Only get(), entries() and values() hand values out; the others look at them as stored.
 */
abstract class MapStateViews<K extends StateKey, V> implements StoredMapState<K, V> {
  protected abstract readonly rt: KeyedStateBackend;
  abstract stored(key: K): V | undefined;
  abstract storedEntries(): Array<[K, V]>;
  abstract forEachStored(fn: (value: V, key: K) => void): void;
  abstract get(key: K): V | undefined;
  abstract put(key: K, value: V): void;
  abstract remove(key: K): void;
  abstract clear(): void;
  abstract entries(): Array<[K, V]>;
  handOut<T>(value: T): T {
    return readState(this.rt, value);
  }
  has(key: K): boolean {
    return this.stored(key) !== undefined;
  }
  keys(): K[] {
    return this.storedEntries().map((e) => e[0]);
  }
  values(): V[] {
    return this.entries().map((e) => e[1]);
  }
  get size(): number {
    return this.storedEntries().length;
  }
  isEmpty(): boolean {
    return this.size === 0;
  }
}

class MapStateHandle<K extends StateKey, V> extends MapStateViews<K, V> {
  constructor(
    protected readonly rt: KeyedStateBackend,
    private readonly i: number,
    private readonly ttl: number | undefined,
  ) {
    super();
  }
  private cell(create: boolean): MapCell | undefined {
    const entry = this.rt.current;
    let c = entry.cells[this.i] as MapCell | undefined;
    if (c === undefined && create) {
      c = new MapCell(this.ttl === undefined ? undefined : new Map());
      this.rt.setCell(this.i, c);
    }
    return c;
  }
  private live(c: MapCell, k: StateKey): boolean {
    return this.ttl === undefined || !expired(c.t?.get(k) ?? 0, this.ttl, this.rt.now);
  }
  stored(key: K): V | undefined {
    const c = this.rt.current.cells[this.i] as MapCell | undefined;
    if (c === undefined) return undefined;
    const v = c.get(key);
    if (v === undefined || this.ttl === undefined) return v as V | undefined;
    return this.live(c, key) ? (v as V) : undefined;
  }
  get(key: K): V | undefined {
    return readState(this.rt, this.stored(key));
  }
  put(key: K, value: V): void {
    checkMapKey(key);
    if (value === undefined) {
      // JSON has no undefined: stored, it would read back as null. As the shared layout does.
      this.remove(key);
      return;
    }
    noteWrite(this.rt, value);
    const c = this.cell(true)!;
    const journal = this.rt.journal;
    // An expired entry is not stored (serialize drops it): put after it as a new entry, last in
    // iteration order, as it would be after a restart.
    if (c.t !== undefined && c.has(key) && !this.live(c, key)) this.remove(key);
    journal.recordMap(c as Map<unknown, unknown>, key);
    c.set(key, value);
    if (c.t !== undefined) {
      journal.recordMap(c.t as Map<unknown, unknown>, key);
      c.t.set(key, this.rt.now);
    }
    this.rt.touch();
  }
  remove(key: K): void {
    const c = this.cell(false);
    if (c === undefined || !c.has(key)) return;
    this.rt.journal.recordMap(c as Map<unknown, unknown>, key);
    c.delete(key);
    if (c.t !== undefined) {
      this.rt.journal.recordMap(c.t as Map<unknown, unknown>, key);
      c.t.delete(key);
    }
    this.rt.touch();
  }
  storedEntries(): Array<[K, V]> {
    const c = this.cell(false);
    if (c === undefined) return [];
    const out: Array<[K, V]> = [];
    for (const [k, v] of c) if (this.live(c, k)) out.push([k as K, v as V]);
    return out;
  }
  forEachStored(fn: (value: V, key: K) => void): void {
    const c = this.cell(false);
    if (c === undefined) return;
    if (this.ttl === undefined) c.forEach(fn as (value: unknown, key: StateKey) => void);
    else for (const [k, v] of this.storedEntries()) fn(v, k);
  }
  entries(): Array<[K, V]> {
    return readEntries(this.rt, this.storedEntries());
  }
  clear(): void {
    if (this.rt.current.cells[this.i] !== undefined) this.rt.setCell(this.i, undefined);
  }
}

/** A journal that records nothing, for writes that are not changes (loading from the store). */
const untracked = new Journal();
untracked.enabled = false;

const SIZE = 0; // undo: size -= delta
const DENSIFY = 1; // undo: back to the sparse map the column had

/**
 * One map key's entries of a 'by-map-key' map state, by the stream key's slot (KeyEntry.slot).
 *
 * Dense, it is an array indexed by slot: the key was already looked up once (the cache), and at
 * 10k keys a second hash lookup per element is a cache miss of its own. Yet an array costs a
 * word per slot of every cached key, so a column starts sparse (a map by slot) and turns dense
 * once it holds values for a quarter of the slots: a window that most keys use, not one of
 * thousands of windows kept for a long allowed lateness that each hold a few keys.
 */
class SlotColumn implements Undoable {
  private dense: unknown[] | undefined = undefined;
  private sparse: Map<number, unknown> | undefined = new Map();
  /** Slots holding a value. */
  size = 0;

  get(slot: number): unknown {
    const dense = this.dense;
    return dense !== undefined ? dense[slot] : this.sparse!.get(slot);
  }

  /**
   * Sets (or, with `value` undefined, deletes) the value of `slot`, journaled. `slots` is how
   * many slots the operator has handed out, the length a dense column needs.
   */
  set(slot: number, value: unknown, journal: Journal, slots: number): void {
    let dense = this.dense;
    if (dense === undefined && value !== undefined && (this.size + 1) * 4 >= slots) {
      dense = this.densify(slots, journal);
    }
    let prev: unknown;
    if (dense !== undefined) {
      // Growing needs no undo: a slot past the old end reads as absent either way.
      for (let i = dense.length; i <= slot; i++) dense.push(undefined);
      prev = dense[slot];
      journal.recordSlot(dense, slot);
      dense[slot] = value;
    } else {
      const sparse = this.sparse!;
      prev = sparse.get(slot);
      journal.recordMap(sparse as Map<unknown, unknown>, slot);
      if (value === undefined) sparse.delete(slot);
      else sparse.set(slot, value);
    }
    if ((prev === undefined) !== (value === undefined)) this.resize(value === undefined ? -1 : 1, journal);
  }

  private resize(delta: number, journal: Journal): void {
    this.size += delta;
    journal.recordUndo(this, SIZE, delta);
  }

  /** Converts to the dense form, journaled: a rollback returns to the same map, unchanged since. */
  private densify(slots: number, journal: Journal): unknown[] {
    const sparse = this.sparse!;
    const dense: unknown[] = new Array(slots).fill(undefined);
    for (const [slot, value] of sparse) {
      for (let i = dense.length; i <= slot; i++) dense.push(undefined);
      dense[slot] = value;
    }
    this.dense = dense;
    this.sparse = undefined;
    journal.recordUndo(this, DENSIFY, sparse);
    return dense;
  }

  undo(kind: unknown, arg: unknown): void {
    if (kind === SIZE) {
      this.size -= arg as number;
    } else {
      this.dense = undefined;
      this.sparse = arg as Map<number, unknown>;
    }
  }

  /** Drops `slot`'s value without a journal (eviction, between commits). */
  forget(slot: number): boolean {
    const dense = this.dense;
    if (dense !== undefined) {
      if (dense[slot] === undefined) return false;
      dense[slot] = undefined;
    } else if (!this.sparse!.delete(slot)) {
      return false;
    }
    this.size--;
    return true;
  }

  get isDense(): boolean {
    return this.dense !== undefined;
  }
}

/**
 * A 'by-map-key' map state of one operator: map key -> (stream key -> value). The window
 * operators keep their accumulators here, by window start: the few live windows' columns are
 * what a batch touches, as in a hand-written loop.
 */
class SharedMapTable extends Map<StateKey, SlotColumn> {
  /**
   * The column `find` returned last: an element mostly reads and then writes the window the
   * previous one did. Valid while it holds a value, since a column leaves the table exactly when
   * its last value goes (a rollback restores both together).
   */
  private lastKey: StateKey | undefined = undefined;
  private lastColumn: SlotColumn | undefined = undefined;

  /** The column of map key `mk`, if any. */
  find(mk: StateKey): SlotColumn | undefined {
    const last = this.lastColumn;
    if (mk === this.lastKey && last !== undefined && last.size > 0) return last;
    const column = this.get(mk);
    if (column !== undefined) {
      this.lastKey = mk;
      this.lastColumn = column;
    }
    return column;
  }

  /** One stream key's entries, ordered by map key (a deterministic order across restarts). */
  entriesOf(slot: number): Array<[StateKey, unknown]> {
    const out: Array<[StateKey, unknown]> = [];
    let sorted = true;
    for (const [mk, column] of this) {
      const v = column.get(slot);
      if (v === undefined) continue;
      if (sorted && out.length > 0 && compareMapKeys(out[out.length - 1]![0], mk) > 0) sorted = false;
      out.push([mk, v]);
    }
    if (!sorted) out.sort((a, b) => compareMapKeys(a[0], b[0]));
    return out;
  }

  /** The stored JSON of one stream key's entries (as mapCellJson), or undefined if none. */
  json(slot: number): string | undefined {
    // Hot at every commit (once per changed key, a sliding window's key with several rows): the
    // pieces are gathered in one pass and joined once, where building the text piece by piece
    // made a string node per piece; entriesOf's arrays only when out of order.
    rowsSlot = slot;
    rowsLast = undefined;
    rowsOrdered = true;
    rowParts.length = 0;
    try {
      this.forEach(gatherRow);
      if (!rowsOrdered) return mapRowsJson(this.entriesOf(slot));
      if (rowParts.length === 0) return undefined;
      rowParts.push(']');
      return rowParts.join('');
    } finally {
      rowParts.length = 0;
    }
  }

  /**
   * Sets (or, with `value` undefined, deletes) `mk`'s value of `slot`, journaled. `slots`: how
   * many slots the operator has handed out.
   */
  write(mk: StateKey, slot: number, value: unknown, journal: Journal, slots: number): void {
    let column = this.find(mk);
    if (column === undefined) {
      if (value === undefined) return;
      journal.recordMap(this as Map<unknown, unknown>, mk);
      column = new SlotColumn();
      this.set(mk, column);
    }
    column.set(slot, value, journal, slots);
    if (column.size === 0) {
      journal.recordMap(this as Map<unknown, unknown>, mk);
      this.delete(mk);
    }
  }

  /** Drops one stream key's entries (evicted from the cache; the store holds them). */
  forget(slot: number): void {
    for (const [mk, column] of this) {
      if (column.forget(slot) && column.size === 0) this.delete(mk);
    }
  }

  /** Installs a key's rows read from the store (not a change: nothing to undo). */
  load(slot: number, rows: ReadonlyArray<readonly [StateKey, unknown]>, slots: number): void {
    for (const [mk, v] of rows) this.write(mk, slot, v, untracked, slots);
  }

  /** How many columns there are, and how many of them are dense (for tests). */
  layout(): { columns: number; dense: number } {
    let dense = 0;
    for (const column of this.values()) if (column.isDense) dense++;
    return { columns: this.size, dense };
  }
}

// SharedMapTable.json's pass: Map.forEach with a shared callback allocates no entry arrays.
let rowsSlot = 0;
let rowsLast: StateKey | undefined;
let rowsOrdered = true;
/** `[[`, row key, `,`, value, `]`, then `,[` and so on for the next rows. */
const rowParts: string[] = [];
function gatherRow(column: SlotColumn, mk: StateKey): void {
  const v = column.get(rowsSlot);
  if (v === undefined || !rowsOrdered) return;
  if (rowsLast !== undefined && compareMapKeys(rowsLast, mk) > 0) {
    rowsOrdered = false;
    return;
  }
  rowsLast = mk;
  rowParts.push(rowParts.length === 0 ? '[[' : ',[', itemJson(mk), ',', itemJson(v), ']');
}

function mapRowsJson(rows: ReadonlyArray<readonly [StateKey, unknown]>): string {
  let text = '';
  for (const [mk, v] of rows) text += `${text === '' ? '[[' : ',['}${itemJson(mk)},${itemJson(v)}]`;
  return `${text}]`;
}

/** Numbers before strings, each in natural order. */
function compareMapKeys(a: StateKey, b: StateKey): number {
  if (typeof a === 'number') return typeof b === 'number' ? a - b : -1;
  if (typeof b === 'number') return 1;
  return a < b ? -1 : a > b ? 1 : 0;
}

class SharedMapStateHandle<K extends StateKey, V> extends MapStateViews<K, V> {
  constructor(
    protected readonly rt: KeyedStateBackend,
    private readonly table: SharedMapTable,
  ) {
    super();
  }
  stored(key: K): V | undefined {
    return this.table.find(key)?.get(this.rt.currentSlot) as V | undefined;
  }
  get(key: K): V | undefined {
    // The window operators' hot path: a number accumulator costs one typeof here.
    return readState(this.rt, this.table.find(key)?.get(this.rt.currentSlot) as V | undefined);
  }
  put(key: K, value: V): void {
    checkMapKey(key);
    noteWrite(this.rt, value);
    this.table.write(key, this.rt.currentSlot, value, this.rt.journal, this.rt.slotCount);
    this.rt.touch();
  }
  remove(key: K): void {
    const slot = this.rt.currentSlot;
    const column = this.table.find(key);
    if (column === undefined || column.get(slot) === undefined) return;
    this.table.write(key, slot, undefined, this.rt.journal, this.rt.slotCount);
    this.rt.touch();
  }
  storedEntries(): Array<[K, V]> {
    return this.table.entriesOf(this.rt.currentSlot) as Array<[K, V]>;
  }
  forEachStored(fn: (value: V, key: K) => void): void {
    for (const [k, v] of this.storedEntries()) fn(v, k);
  }
  entries(): Array<[K, V]> {
    return readEntries(this.rt, this.storedEntries());
  }
  clear(): void {
    for (const [k] of this.storedEntries()) this.remove(k);
  }
}

class ListStateHandle<T> implements ListState<T> {
  constructor(
    private readonly rt: KeyedStateBackend,
    private readonly i: number,
    private readonly ttl: number | undefined,
  ) {}
  get(): readonly T[] {
    const c = this.rt.current.cells[this.i] as ListCell | undefined;
    if (c === undefined) return [];
    const items =
      this.ttl === undefined
        ? (c.items as T[])
        : (c.items.filter((_, j) => !expired(c.t?.[j] ?? 0, this.ttl, this.rt.now)) as T[]);
    // The array itself is replaced on every write (add copies it); its elements may be objects.
    return items.some(isObject) ? readState(this.rt, items) : items;
  }
  add(value: T): void {
    noteWrite(this.rt, value);
    const c = this.rt.current.cells[this.i] as ListCell | undefined;
    const items = c === undefined ? [value] : [...c.items, value];
    const t = this.ttl === undefined ? undefined : [...(c?.t ?? []), this.rt.now];
    // Copy-on-write keeps rollback trivial; lists are expected to stay small per key.
    this.rt.setCell(this.i, { items, t });
  }
  update(values: readonly T[]): void {
    if (!Array.isArray(values)) {
      throw new TypeError(
        `list state update(values) needs an array; received ${describeValue(values)}. Use add(value) to append one value`,
      );
    }
    if (values.length === 0) {
      this.clear();
      return;
    }
    if (values.some(isObject)) this.rt.journal.noteObjectWrite();
    const now = this.rt.now;
    this.rt.setCell(this.i, {
      items: [...values],
      t: this.ttl === undefined ? undefined : values.map(() => now),
    });
  }
  clear(): void {
    if (this.rt.current.cells[this.i] !== undefined) this.rt.setCell(this.i, undefined);
  }
}
