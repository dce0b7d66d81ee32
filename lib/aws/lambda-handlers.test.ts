/** The worker container's warm-task limits follow the configured state cache. */
import { describe, expect, it } from 'vitest';
import pageViews from '../../examples/page-views.ts';
import { compile, pipeline } from '../core/index.ts';
import { DEFAULT_MAX_CACHED_KEYS } from '../runtime/worker.ts';
import { warmTaskLimits } from './lambda-handlers.ts';

describe('warmTaskLimits', () => {
  it('lets the kept tasks together cache what one invocation may: maxCachedKeys per keyed operator', () => {
    const onePlan = compile(pageViews);
    expect(onePlan.operators).toHaveLength(1);
    expect(warmTaskLimits(onePlan)).toEqual({
      maxKeys: DEFAULT_MAX_CACHED_KEYS,
      maxTotalKeys: DEFAULT_MAX_CACHED_KEYS,
    });
    expect(warmTaskLimits(onePlan, 500_000)).toEqual({ maxKeys: 500_000, maxTotalKeys: 500_000 });

    const two = pipeline('two-operators');
    const events = two.source<{ k: string; n: number }>();
    events
      .keyBy((e) => e.k)
      .process({ processElement: (e, ctx) => ctx.emit(e.n) })
      .sink('a');
    events
      .keyBy((e) => e.k)
      .process({ processElement: (e, ctx) => ctx.emit(-e.n) })
      .sink('b');
    const twoPlan = compile(two);
    expect(twoPlan.operators).toHaveLength(2);
    expect(warmTaskLimits(twoPlan, 1_000)).toEqual({ maxKeys: 2_000, maxTotalKeys: 2_000 });
  });
});
