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

/**
 * Where `value` holds something that JSON.stringify then JSON.parse would not give back
 * unchanged, with what is there and what JSON makes of it (`$.a[2] is a function, which JSON
 * stores as null`); undefined when it round-trips. An object property whose value is undefined
 * counts as round-tripping: reading it gives undefined either way.
 */
export function jsonLoss(value: unknown, path = '$', depth = 0): string | undefined {
  switch (typeof value) {
    case 'string':
    case 'boolean':
      return undefined;
    case 'number':
      return Number.isFinite(value) ? undefined : `${path} is ${value}, which JSON stores as null`;
    case 'object': {
      if (value === null || depth > MAX_DEPTH) return undefined;
      if (Array.isArray(value)) {
        for (let i = 0; i < value.length; i++) {
          if (!(i in value)) return `${path}[${i}] is an empty array slot, which JSON stores as null`;
          const item: unknown = value[i];
          const loss =
            item === undefined
              ? `${path}[${i}] is undefined, which JSON stores as null`
              : jsonLoss(item, `${path}[${i}]`, depth + 1);
          if (loss !== undefined) return loss;
        }
        return undefined;
      }
      const proto: unknown = Object.getPrototypeOf(value);
      if (proto !== Object.prototype && proto !== null) {
        return typeof (value as { toJSON?: unknown }).toJSON === 'function'
          ? `${path} is ${kindOf(value)}, which JSON stores as what its toJSON returns (store that instead)`
          : `${path} is ${kindOf(value)}, which JSON stores as a plain object of its own fields`;
      }
      for (const key of Object.keys(value)) {
        const field: unknown = (value as Record<string, unknown>)[key];
        if (field === undefined) continue;
        const loss = jsonLoss(
          field,
          `${path}${/^[A-Za-z_$][\w$]*$/.test(key) ? `.${key}` : `[${JSON.stringify(key)}]`}`,
          depth + 1,
        );
        if (loss !== undefined) return loss;
      }
      return undefined;
    }
    case 'undefined':
      return `${path} is undefined, which JSON does not store`;
    case 'bigint':
      return `${path} is a BigInt, which JSON cannot store`;
    default:
      return `${path} is a ${typeof value}, which JSON does not store`;
  }
}
