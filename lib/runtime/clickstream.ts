/**
 * A deterministic synthetic clickstream: users browse in sessions (bursts separated by idle
 * gaps), pages follow a Zipf-like popularity, a fraction of events arrive out of order
 * (within the watermark bound) and a smaller fraction arrive late (behind the watermark).
 */
import { seededRandom } from '../core/index.ts';

export interface Click {
  readonly user: string;
  readonly page: string;
  /** Event time, epoch ms. */
  readonly ts: number;
}

export interface ClickstreamOptions {
  /** Number of events. @default 200_000 */
  readonly events?: number;
  /** Distinct users. @default 2_000 */
  readonly users?: number;
  /** Distinct pages. @default 50 */
  readonly pages?: number;
  /** Events per second of event time. @default 200 */
  readonly rate?: number;
  /** Fraction of events displaced backwards by up to `outOfOrderMs`. @default 0.05 */
  readonly outOfOrder?: number;
  /** Fraction of events displaced backwards by 10 s to 2 min (behind the watermark). @default 0.005 */
  readonly late?: number;
  /** Maximum displacement of out-of-order events. @default 4_000 */
  readonly outOfOrderMs?: number;
  /** Event time of the first event. @default 2026-01-01T00:00:00Z */
  readonly start?: number;
  /** PRNG seed. @default 42 */
  readonly seed?: number;
}

const PAGE_NAMES = ['/', '/search', '/cart', '/checkout', '/login', '/account', '/help', '/deals'];

function pageName(i: number): string {
  return i < PAGE_NAMES.length ? PAGE_NAMES[i]! : `/product/${i - PAGE_NAMES.length + 1}`;
}

export function* clickstream(options: ClickstreamOptions = {}): Generator<Click> {
  const events = options.events ?? 200_000;
  const users = options.users ?? 2_000;
  const pages = options.pages ?? 50;
  const rate = options.rate ?? 200;
  const outOfOrder = options.outOfOrder ?? 0.05;
  const late = options.late ?? 0.005;
  const outOfOrderMs = options.outOfOrderMs ?? 4_000;
  const start = options.start ?? Date.UTC(2026, 0, 1);
  const rnd = seededRandom(options.seed ?? 42);
  // Zipf-like page weights (1/rank), sampled through the cumulative distribution.
  const cumulative: number[] = [];
  let total = 0;
  for (let i = 0; i < pages; i++) {
    total += 1 / (i + 1);
    cumulative.push(total);
  }
  const pickPage = (): string => {
    const x = rnd() * total;
    let lo = 0;
    let hi = pages - 1;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (cumulative[mid]! < x) lo = mid + 1;
      else hi = mid;
    }
    return pageName(lo);
  };
  // Each user is active in bursts: after each click, with small probability the user goes idle
  // for 31-60 minutes of event time (which ends a 30-minute session).
  const idleUntil = new Float64Array(users);
  let t = start;
  for (let n = 0; n < events; n++) {
    t += (-Math.log(1 - rnd()) * 1000) / rate; // Poisson arrivals
    let u = Math.floor(rnd() * users);
    for (let tries = 0; tries < 50 && idleUntil[u]! > t; tries++) u = Math.floor(rnd() * users);
    if (rnd() < 0.015) idleUntil[u] = t + (31 + rnd() * 29) * 60_000;
    let ts = Math.floor(t);
    const r = rnd();
    if (r < late) ts -= 10_000 + Math.floor(rnd() * 110_000);
    else if (r < late + outOfOrder) ts -= Math.floor(rnd() * outOfOrderMs);
    yield { user: `user-${String(u).padStart(5, '0')}`, page: pickPage(), ts };
  }
}
