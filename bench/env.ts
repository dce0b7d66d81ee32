/** A whole-number benchmark setting from the environment (underscores allowed: 1_000_000). */
export function envInt(name: string, fallback: number, min = 1): number {
  const raw = process.env[name];
  if (raw === undefined || raw === '') return fallback;
  const n = Number(raw.replaceAll('_', ''));
  if (!Number.isInteger(n) || n < min) throw new Error(`${name} must be an integer >= ${min}; got ${raw}`);
  return n;
}
