/**
 * What JSON would not give back as it is. State is stored as JSON, so a value JSON changes
 * (a function dropped, Infinity turned into null, a Map into {}) would read back differently
 * after a restart than the task held in memory, and results would depend on where restarts
 * fall. Commits refuse such values instead (see KeyedStateBackend.serialize).
 */

/** Nesting depth past which values are not inspected (JSON.stringify refuses cycles itself). */
const MAX_DEPTH = 256;

function kindOf(value: object): string {
  const name = (value as { constructor?: { name?: unknown } }).constructor?.name;
  return typeof name === 'string' && name !== '' ? `a ${name}` : 'an object with a prototype';
}

/** A part of a value JSON would change: where, relative to the value, and what is there. */
interface Loss {
  readonly path: string;
  readonly what: string;
}

/**
 * Where `value` holds something that JSON.stringify then JSON.parse would not give back
 * unchanged, with what is there and what JSON makes of it (`$.a[2] is a function, which JSON
 * stores as null`); undefined when it round-trips. An object property whose value is undefined
 * counts as round-tripping: reading it gives undefined either way.
 */
export function jsonLoss(value: unknown, path = '$'): string | undefined {
  const loss = lossIn(value, 0);
  return loss === undefined ? undefined : `${path}${loss.path} ${loss.what}`;
}

/** Commits call this for every value they write: a value that round-trips allocates nothing. */
function lossIn(value: unknown, depth: number): Loss | undefined {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return undefined;
    case 'number':
      return Number.isFinite(value)
        ? undefined
        : { path: '', what: `is ${value}, which JSON stores as null` };
    case 'object': {
      if (value === null || depth > MAX_DEPTH) return undefined;
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) {
          if (!(i in value))
            return { path: `[${i}]`, what: 'is an empty array slot, which JSON stores as null' };
          const item: unknown = value[i];
          if (item === undefined) return { path: `[${i}]`, what: 'is undefined, which JSON stores as null' };
          const loss = lossIn(item, depth + 1);
          if (loss !== undefined) return { path: `[${i}]${loss.path}`, what: loss.what };
        }
        return undefined;
      }
      const proto: unknown = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) {
        return {
          path: '',
          what:
            typeof (value as { toJSON?: unknown }).toJSON === 'function'
              ? `is ${kindOf(value)}, which JSON stores as what its toJSON returns (store that instead)`
              : `is ${kindOf(value)}, which JSON stores as a plain object of its own fields`,
        };
      }
      for (const key of Object.keys(value)) {
        const field: unknown = (value as Record<string, unknown>)[key];
        if (field === undefined) continue;
        const loss = lossIn(field, depth + 1);
        if (loss !== undefined) {
          const segment = /^[A-Za-z_$][\w$]*$/.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`;
          return { path: `${segment}${loss.path}`, what: loss.what };
        }
      }
      return undefined;
    }
    case 'undefined':
      return { path: '', what: 'is undefined, which JSON does not store' };
    case 'bigint':
      return { path: '', what: 'is a BigInt, which JSON cannot store' };
    default:
      return { path: '', what: `is a ${typeof value}, which JSON does not store` };
  }
}
