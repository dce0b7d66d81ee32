/**
 * The 'by-map-key' map state layout (state.ts SharedMapTable): one column per map key, by the
 * stream key's slot, sparse until a quarter of the slots use it. Checked against a plain model
 * through writes, reads, rollbacks of whole records, eviction and reloading.
 */
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { Journal } from './journal.ts';
import { KeyedStateBackend, type MapState, mapState, type StateKey } from './state.ts';

type Spec = { m: ReturnType<typeof mapState<number, number>> };

function backendWithMapState(): {
  backend: KeyedStateBackend;
  journal: Journal;
  m: MapState<number, number>;
} {
  const journal = new Journal();
  const backend = new KeyedStateBackend(
    'op',
    { m: mapState<number, number>({ layout: 'by-map-key' }) },
    journal,
  );
  return { backend, journal, m: backend.handles<Spec>().m as MapState<number, number> };
}

type Op =
  | { kind: 'put'; key: number; mk: number; value: number }
  | { kind: 'remove'; key: number; mk: number }
  | { kind: 'clear'; key: number };

/** A record: some ops, then either kept or rolled back (as a throwing user function is). */
interface RecordOps {
  readonly ops: readonly Op[];
  readonly rollback: boolean;
}

const KEYS = 40;
const MAP_KEYS = 6;

const opArb: fc.Arbitrary<Op> = fc.oneof(
  {
    weight: 6,
    arbitrary: fc.record({
      kind: fc.constant('put' as const),
      key: fc.nat(KEYS - 1),
      mk: fc.nat(MAP_KEYS - 1),
      value: fc.integer({ min: -1000, max: 1000 }),
    }),
  },
  {
    weight: 3,
    arbitrary: fc.record({
      kind: fc.constant('remove' as const),
      key: fc.nat(KEYS - 1),
      mk: fc.nat(MAP_KEYS - 1),
    }),
  },
  { weight: 1, arbitrary: fc.record({ kind: fc.constant('clear' as const), key: fc.nat(KEYS - 1) }) },
);

const recordArb: fc.Arbitrary<RecordOps> = fc.record({
  ops: fc.array(opArb, { minLength: 1, maxLength: 30 }),
  rollback: fc.boolean(),
});

type Model = Map<StateKey, Map<number, number>>;

const cloneModel = (model: Model): Model => new Map([...model].map(([k, m]) => [k, new Map(m)]));

function applyToModel(model: Model, op: Op): void {
  const key = `k${op.key}`;
  let rows = model.get(key);
  if (rows === undefined) {
    rows = new Map();
    model.set(key, rows);
  }
  if (op.kind === 'put') rows.set(op.mk, op.value);
  else if (op.kind === 'remove') rows.delete(op.mk);
  else rows.clear();
}

const sortedRows = (rows: Map<number, number> | undefined): Array<[number, number]> =>
  [...(rows ?? [])].sort((a, b) => a[0] - b[0]);

describe("MapState with layout 'by-map-key'", () => {
  it('property: reads, entries and the stored form follow a plain model through rollbacks, eviction and reloads', () => {
    fc.assert(
      fc.property(
        fc.array(recordArb, { minLength: 1, maxLength: 40 }),
        fc.array(fc.integer({ min: 1, max: KEYS }), { minLength: 1, maxLength: 4 }),
        (records, limits) => {
          const { backend, journal, m } = backendWithMapState();
          /** What the store holds: the last committed text per address. */
          const store = new Map<string, string>();
          let model: Model = new Map();
          records.forEach((record, r) => {
            const before = cloneModel(model);
            // As a shard task prefetches: every key a record uses is read before it runs.
            for (const op of record.ops) {
              const key = `k${op.key}`;
              if (!backend.isCached(key)) backend.load(key, store.get(backend.address(key)));
            }
            journal.reset();
            for (const op of record.ops) {
              const key = `k${op.key}`;
              backend.setCurrentKey(key);
              if (op.kind === 'put') m.put(op.mk, op.value);
              else if (op.kind === 'remove') m.remove(op.mk);
              else m.clear();
              applyToModel(model, op);
              expect(m.entries()).toEqual(sortedRows(model.get(key)));
            }
            if (record.rollback) {
              journal.rollback();
              model = before;
            } else {
              journal.reset();
            }
            // Every cached key reads as the model says, after the record or its rollback.
            for (const key of backend.cache.keys()) {
              backend.setCurrentKey(key);
              const rows = sortedRows(model.get(key));
              expect(m.entries()).toEqual(rows);
              for (let mk = 0; mk < MAP_KEYS; mk++) {
                expect(m.get(mk)).toBe(model.get(key)?.get(mk));
              }
            }
            // A commit now and then, then eviction down to a changing limit: dropped keys are
            // read back from their stored form when next used.
            if (r % 3 === 2) {
              for (const { address, value } of backend.takeMutations()) {
                if (value === null) store.delete(address);
                else store.set(address, value);
              }
              backend.evict(limits[r % limits.length]!);
            }
          });
          // The stored form of every key equals the model's rows.
          for (const { address, value } of backend.takeMutations()) {
            if (value === null) store.delete(address);
            else store.set(address, value);
          }
          for (let k = 0; k < KEYS; k++) {
            const key = `k${k}`;
            const rows = sortedRows(model.get(key));
            const text = store.get(backend.address(key));
            if (rows.length === 0) expect(text).toBeUndefined();
            else expect(text).toBe(JSON.stringify({ k: key, s: { m: rows } }));
          }
        },
      ),
      { numRuns: 200 },
    );
  });

  it('keeps a map key that few stream keys use sparse, and turns one that most use dense', () => {
    const { backend, journal, m } = backendWithMapState();
    // 1,000 keys, each with its own map key (windows kept for a long lateness, each with a
    // few keys), plus map key -1 that every key uses (the current window).
    for (let k = 0; k < 1000; k++) backend.setCurrentKey(`k${k}`);
    for (let k = 0; k < 1000; k++) {
      journal.reset();
      backend.setCurrentKey(`k${k}`);
      m.put(k, k);
      m.put(-1, k);
    }
    const layout = backend.sharedTableLayout('m');
    expect(layout).toEqual({ columns: 1001, dense: 1 });
    backend.setCurrentKey('k500');
    expect(m.entries()).toEqual([
      [-1, 500],
      [500, 500],
    ]);
  });

  it('rolls back a record that turned a column dense to the sparse column it had', () => {
    const { backend, journal, m } = backendWithMapState();
    for (let k = 0; k < 16; k++) backend.setCurrentKey(`k${k}`); // 16 slots
    journal.reset();
    for (let k = 0; k < 3; k++) {
      backend.setCurrentKey(`k${k}`);
      m.put(7, k);
    }
    journal.reset();
    // The 4th value makes 4 of 16 slots: the column turns dense within this record...
    for (let k = 3; k < 8; k++) {
      backend.setCurrentKey(`k${k}`);
      m.put(7, 100 + k);
    }
    backend.setCurrentKey('k1');
    m.put(7, -1);
    m.remove(7);
    journal.rollback();
    // ...and the rollback leaves exactly the three values before it.
    for (let k = 0; k < 16; k++) {
      backend.setCurrentKey(`k${k}`);
      expect(m.get(7)).toBe(k < 3 ? k : undefined);
    }
    const layout = backend.sharedTableLayout('m');
    expect(layout).toEqual({ columns: 1, dense: 0 });
  });
});
