/**
 * Reading keyed state back from the store: a corrupted entry fails with a StateFormatError that
 * names the entry and what is wrong with it, and leaves the backend as it was.
 */
import { describe, expect, it } from 'vitest';
import { StateFormatError } from './errors.ts';
import { Journal } from './journal.ts';
import {
  KeyedStateBackend,
  type ListState,
  listState,
  type MapState,
  mapState,
  type ValueState,
  valueState,
} from './state.ts';

const spec = {
  v: valueState<number>(),
  m: mapState<string, number>(),
  l: listState<string>({ ttl: 60_000 }),
  w: mapState<number, number>({ layout: 'by-map-key' }),
};

function backendWithEveryKind() {
  const backend = new KeyedStateBackend('op', spec, new Journal());
  const h = backend.handles<typeof spec>() as unknown as {
    v: ValueState<number>;
    m: MapState<string, number>;
    l: ListState<string>;
    w: MapState<number, number>;
  };
  return { backend, ...h };
}

describe('stored keyed state', () => {
  it('reads back what it wrote, for every kind of state', () => {
    const a = backendWithEveryKind();
    a.backend.setCurrentKey('k');
    a.v.update(7);
    a.m.put('x', 1);
    a.l.add('item');
    a.w.put(1_000, 3);
    const [stored] = a.backend.takeMutations();
    const b = backendWithEveryKind();
    b.backend.load('k', stored!.value!);
    b.backend.setCurrentKey('k');
    expect([b.v.value(), b.m.entries(), [...b.l.get()], b.w.entries()]).toEqual([
      7,
      [['x', 1]],
      ['item'],
      [[1_000, 3]],
    ]);
  });

  it.each([
    ['not JSON', '{"k":"k","s":', 'is not valid JSON'],
    ['not an object', '42', 'expected {"k": <key>, "s": {<state name>: <value>}}'],
    ['no states', '{"k":"k"}', 'expected {"k": <key>, "s": {<state name>: <value>}}'],
    [
      'a value state that is not an array',
      '{"k":"k","s":{"v":7}}',
      'state "v" (value state) is not an array',
    ],
    ['an empty value state', '{"k":"k","s":{"v":[]}}', 'state "v" (value state) is an empty array'],
    [
      'a map row without a value',
      '{"k":"k","s":{"m":[["x"]]}}',
      'state "m" (map state) has a malformed entry at index 0: ["x"]',
    ],
    [
      'a map key that is an object',
      '{"k":"k","s":{"m":[["x",1],[{},2]]}}',
      'state "m" (map state) has a malformed entry at index 1',
    ],
    [
      'a TTL list item without its time',
      '{"k":"k","s":{"l":["item"]}}',
      'state "l" (list state) has a malformed entry at index 0: "item"',
    ],
    [
      'a window table that is not an array',
      '{"k":"k","s":{"w":{"1000":3}}}',
      'state "w" (map state) is not an array',
    ],
    [
      'a window row that is not an array',
      '{"k":"k","s":{"w":[[1000,3],5]}}',
      'state "w" (map state) has a malformed entry at index 1: 5',
    ],
  ])('rejects %s with a StateFormatError naming the entry and the fault', (_name, text, fault) => {
    const { backend } = backendWithEveryKind();
    let error: unknown;
    try {
      backend.load('k', text);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(StateFormatError);
    expect((error as Error).message).toContain('op/"k"');
    expect((error as Error).message).toContain(fault);
  });

  it('leaves nothing behind when an entry is corrupted: the key is not cached and its slot is reused', () => {
    const { backend, w } = backendWithEveryKind();
    // The first rows decode into the window table before the malformed one is found.
    expect(() => backend.load('bad', '{"k":"bad","s":{"w":[[1000,3],[2000,4],7]}}')).toThrow(
      StateFormatError,
    );
    expect(backend.isCached('bad')).toBe(false);
    expect(backend.sharedTableLayout('w')).toEqual({ columns: 0, dense: 0 });
    backend.load('good', '{"k":"good","s":{"w":[[3000,5]]}}');
    expect(backend.slotCount).toBe(1);
    backend.setCurrentKey('good');
    expect(w.entries()).toEqual([[3_000, 5]]);
  });
});
