/**
 * Values that are not JSON (a BigInt) in an output, in state or from a timer, on the embedded
 * backend: the commit fails, the worker processes the shard again from its last commit checking
 * every record, and only the records (or timers) that produced such values are dead-lettered.
 * Everything else equals a run without them.
 */
import { rmSync } from 'node:fs';
import { afterAll, describe, expect, it } from 'vitest';
import {
  boundedOutOfOrderness,
  count,
  DEAD_LETTER_SINK,
  type Pipeline,
  pipeline,
  seconds,
  tumbling,
  valueState,
} from '../core/index.ts';
import { dataDir, outputsOf, produce, runUntilIdle, tmpRoot } from './testing/savepoint-harness.ts';
import { type Click, generateClicks } from './testing/savepoint-pipelines.ts';

const ROOT = tmpRoot();
afterAll(() => rmSync(ROOT, { recursive: true, force: true }));

const CLICKS = generateClicks(1500);
/** The pages whose clicks produce a BigInt (a few clicks of the generated stream). */
const POISON = new Set(CLICKS.filter((_, i) => i % 400 === 7).map((c) => `${c.user}@${c.ts}`));
const poisoned = (c: Click): boolean => POISON.has(`${c.user}@${c.ts}`);

/** Per user: 10 s window counts, and a running total kept in state and emitted per click. */
function poisonPipeline(where: 'output' | 'state' | 'state-infinity' | 'timer' | 'none'): Pipeline {
  const p = pipeline('poison');
  const byUser = p
    .source<Click>()
    .withTimestamps((c) => c.ts, boundedOutOfOrderness(seconds(2)))
    .keyBy((c) => c.user);
  byUser
    .window(tumbling({ size: 10_000 }))
    .aggregate(count<Click>(), ({ key, window, result }) => ({ user: key, start: window.start, result }))
    .sink('counts');
  byUser
    .process<unknown, { total: ReturnType<typeof valueState<unknown>> }>({
      state: { total: valueState<unknown>() },
      processElement(c, ctx) {
        const bad = where !== 'none' && poisoned(c);
        const total = ((ctx.state.total.value() as number | undefined) ?? 0) + 1;
        // Infinity is stored by JSON as null: after a restart the total would read back null.
        const poison = where === 'state' ? BigInt(total) : Number.POSITIVE_INFINITY;
        ctx.state.total.update(bad && where.startsWith('state') ? poison : total);
        if (bad && where === 'timer') ctx.timers.registerEventTimeTimer(c.ts, 'poison');
        ctx.emit({ user: c.user, ts: c.ts, total: bad && where === 'output' ? BigInt(total) : total });
      },
      onTimer(timer, ctx) {
        ctx.emit({ user: ctx.key, at: timer.time, big: 1n });
      },
    })
    .sink('totals');
  return p;
}

/** The run's outputs by sink, values as JSON, without output ids (they depend on commits). */
function bySink(dir: Parameters<typeof outputsOf>[0], job: string): Record<string, string[]> {
  const out: Record<string, string[]> = {};
  for (const o of outputsOf(dir, job)) {
    const values = out[o.sink] ?? [];
    values.push(JSON.stringify(o.value));
    out[o.sink] = values;
  }
  for (const values of Object.values(out)) values.sort();
  return out;
}

describe('values that are not JSON', () => {
  it.each(['output', 'state', 'state-infinity', 'timer'] as const)(
    'a BigInt (or Infinity) in %s: only its record goes to the dead-letter output; all other results are exact',
    async (where) => {
      const data = await dataDir(ROOT, { shards: 2 });
      await produce(data.log, CLICKS);
      await runUntilIdle(data, `bad-${where}`, poisonPipeline(where), { batchSize: 200 });
      // The reference: the pipeline without poison, over the same clicks less the poisoned ones
      // (whose records are dead-lettered whole), or over all of them for a timer (whose record
      // stands; only the timer fails).
      const clean = await dataDir(ROOT, { shards: 2 });
      await produce(clean.log, where === 'timer' ? CLICKS : CLICKS.filter((c) => !poisoned(c)));
      await runUntilIdle(clean, 'clean', poisonPipeline('none'), { batchSize: 200 });

      const got = bySink(data.db, `bad-${where}`);
      const letters = (got[DEAD_LETTER_SINK] ?? []).map((t) => JSON.parse(t) as Record<string, unknown>);
      expect(letters).toHaveLength(POISON.size);
      for (const letter of letters) {
        expect(letter.reason).toBe(where === 'timer' ? 'timer' : 'serialization');
        expect(String(letter.message)).toMatch(
          where === 'state-infinity' ? /total is Infinity, which JSON stores as null/ : /JSON|BigInt/,
        );
      }
      expect({ ...got, [DEAD_LETTER_SINK]: undefined }).toEqual({
        ...bySink(clean.db, 'clean'),
        [DEAD_LETTER_SINK]: undefined,
      });
      data.close();
      clean.close();
    },
  );
});
