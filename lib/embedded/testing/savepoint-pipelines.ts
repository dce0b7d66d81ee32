/**
 * Pipelines and input for the savepoint tests: clicks keyed by user, counted in 10 s tumbling
 * windows (operator "counts") and watched by a process function with value state and event-time
 * timers (operator "bursts": a user's clicks until 5 s of event time without one).
 *
 * - v1 has a bug: it reports clicks + 1 per window.
 * - v2 fixes the window function (the same state: a compatible change).
 * - session: "counts" over session windows, an incompatible state layout.
 * - no-bursts: the "bursts" operator removed.
 * - renamed: v1 with the "bursts" operator's uid changed to "bursts-v2".
 */
import {
  boundedOutOfOrderness,
  count,
  type Pipeline,
  pipeline,
  seconds,
  session,
  tumbling,
  valueState,
} from '../../core/index.ts';

export interface Click {
  readonly user: string;
  readonly page: string;
  readonly ts: number;
}

export interface WindowCount {
  readonly user: string;
  readonly start: number;
  readonly clicks: number;
}

export interface Burst {
  readonly user: string;
  readonly clicks: number;
  readonly end: number;
}

export type Variant = 'v1' | 'v2' | 'session' | 'no-bursts' | 'renamed';

export const WINDOW_MS = 10_000;
export const BURST_GAP_MS = 5_000;

export function clicksPipeline(variant: Variant): Pipeline {
  const p = pipeline('sp-clicks', { version: variant });
  const byUser = p
    .source<Click>()
    .withTimestamps((c) => c.ts, boundedOutOfOrderness(seconds(2)))
    .keyBy((c) => c.user);
  const windowed = byUser.window(
    variant === 'session' ? session({ gap: seconds(3) }) : tumbling({ size: WINDOW_MS }),
  );
  windowed
    .uid('counts')
    .aggregate(count<Click>(), ({ key, window, result }) => ({
      user: String(key),
      start: window.start,
      clicks: variant === 'v1' || variant === 'renamed' ? result + 1 : result,
    }))
    .sink('counts');
  if (variant !== 'no-bursts') {
    byUser
      .process<
        Burst,
        { n: ReturnType<typeof valueState<number>>; timer: ReturnType<typeof valueState<number>> }
      >(
        {
          state: { n: valueState<number>(), timer: valueState<number>() },
          processElement(click, ctx) {
            ctx.state.n.update((ctx.state.n.value() ?? 0) + 1);
            const previous = ctx.state.timer.value();
            if (previous !== undefined) ctx.timers.deleteEventTimeTimer(previous);
            const at = click.ts + BURST_GAP_MS;
            ctx.timers.registerEventTimeTimer(at);
            ctx.state.timer.update(at);
          },
          onTimer(timer, ctx) {
            ctx.emit({ user: String(ctx.key), clicks: ctx.state.n.value() ?? 0, end: timer.time });
            ctx.state.n.clear();
            ctx.state.timer.clear();
          },
        },
        { uid: variant === 'renamed' ? 'bursts-v2' : 'bursts' },
      )
      .sink('bursts');
  }
  return p;
}

/** Deterministic clicks: `users` users, ~`stepMs` apart in event time, out of order by < 1 s. */
export function generateClicks(
  n: number,
  options: { users?: number; seed?: number; start?: number } = {},
): Click[] {
  const users = options.users ?? 40;
  let seed = options.seed ?? 7;
  const random = (): number => {
    seed = (seed * 1103515245 + 12345) % 2147483648;
    return seed / 2147483648;
  };
  const start = options.start ?? 1_767_261_600_000; // 2026-01-01T10:00:00Z
  const out: Click[] = [];
  let t = start;
  for (let i = 0; i < n; i++) {
    t += Math.floor(random() * 200);
    // Users are active in turns, so bursts end and timers fire along the way.
    const phase = Math.floor(i / 300) % 4;
    const user = `u${(Math.floor(random() * (users / 4)) * 4 + phase) % users}`;
    out.push({ user, page: `/p${Math.floor(random() * 7)}`, ts: t - Math.floor(random() * 900) });
  }
  return out;
}
