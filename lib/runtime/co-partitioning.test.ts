/** The local runner's co-partitioning check (co-partitioning.ts). */
import { describe, expect, it } from 'vitest';
import pageViews from '../../examples/page-views.ts';
import { ConfigurationError, compile, MemoryBackend, type ShardInfo } from '../core/index.ts';
import { clickstream } from './clickstream.ts';
import { CoPartitioningCheck } from './co-partitioning.ts';
import { runJob } from './local-runner.ts';
import { MemoryStream } from './testing/memory-stream.ts';

const shard = (shardId: string, parentShardIds: string[] = []): ShardInfo => ({
  shardId,
  parentShardIds,
  hashKeyRange: { start: '0', end: '1' },
  closed: false,
});
const write = (address: string) => ({ address, value: '{}' });

describe('CoPartitioningCheck', () => {
  it('lets a shard rewrite its keys, and a split or merge child take over its parents keys', () => {
    const check = new CoPartitioningCheck();
    check.lineage([shard('a'), shard('b'), shard('a1', ['a']), shard('m', ['a1', 'b'])]);
    check.check('a', [write('op/"k1"')]);
    check.check('a', [write('op/"k1"')]);
    check.check('b', [write('op/"k2"')]);
    check.check('a1', [write('op/"k1"')]); // split child of a
    check.check('m', [write('op/"k1"'), write('op/"k2"')]); // merge of a1 and b: a grandchild of a
  });

  it('rejects a key written by two unrelated shards, before the second commit', () => {
    const check = new CoPartitioningCheck();
    check.lineage([shard('a'), shard('b'), shard('a1', ['a'])]);
    check.check('a1', [write('op/"k"')]);
    expect(() => check.check('a', [write('op/"k"')])).toThrow(ConfigurationError); // a parent after its child
    expect(() => check.check('b', [write('op/"other"'), write('op/"k"')])).toThrow(
      /keyed state entry op\/"k" was written by shard a1 and now by shard b, and neither shard descends from the other: the pipeline's keyBy does not follow the stream's partition key/,
    );
    // The rejected commit recorded nothing: "other" is still free for any shard.
    check.check('a', [write('op/"other"')]);
  });

  it('ignores timer chunks, and remembers at most maxEntries entries', () => {
    const check = new CoPartitioningCheck(2);
    check.lineage([shard('a'), shard('b')]);
    check.check('a', [write('floe.timers/"a/1"'), write('op/"1"'), write('op/"2"'), write('op/"3"')]);
    check.check('b', [write('floe.timers/"a/1"'), write('op/"3"')]); // "3" was not remembered
    expect(() => check.check('b', [write('op/"2"')])).toThrow(ConfigurationError);
  });
});

describe('runJob and co-partitioning', () => {
  /** The page-views example (keyed by page) over a 4-shard stream partitioned by `by`. */
  const run = async (by: 'page' | 'user') => {
    const stream = new MemoryStream(4, () => 0);
    const encoder = new TextEncoder();
    const T0 = Date.UTC(2026, 0, 2);
    for (const view of clickstream({ events: 2000, pages: 30, users: 200, seed: 4 })) {
      stream.put(view[by], encoder.encode(JSON.stringify(view)), T0);
    }
    const published: unknown[] = [];
    return runJob(
      {
        job: 'co-partitioning',
        plan: compile(pageViews),
        source: stream,
        backend: new MemoryBackend(),
        sink: { publish: async (outputs) => void published.push(...outputs) },
        clock: () => T0 + 86_400_000,
      },
      { untilIdle: true, idlePollMs: 1, roundPauseMs: 1, batchSize: 100 },
    );
  };

  it('runs a stream partitioned by the pipeline key', async () => {
    expect((await run('page')).records).toBe(2000);
  });

  it('stops with a ConfigurationError when the stream is partitioned by another field', async () => {
    await expect(run('user')).rejects.toThrow(/does not follow the stream's partition key/);
  });
});
