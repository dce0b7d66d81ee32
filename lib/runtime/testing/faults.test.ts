import { describe, expect, it } from 'vitest';
import { initialCheckpoint, MemoryBackend, type Output } from '../../core/index.ts';
import {
  FAULT_POINTS,
  FaultInjector,
  faultyBackend,
  faultySink,
  faultySource,
  Gate,
  InjectedCrash,
  spreadOccurrences,
} from './faults.ts';
import { MemorySink, MemoryStream } from './memory-stream.ts';

const SHARD = 'shardId-000000000000';

function outputs(n: number): Output[] {
  return Array.from({ length: n }, (_, i) => ({ id: `j/${SHARD}/1/${i}`, sink: 'out', value: i }));
}

describe('FaultInjector', () => {
  it('crashes at the configured occurrences of a point, counted across restarts', async () => {
    const injector = new FaultInjector([{ point: 'x', at: [2, 4] }]);
    const seen: string[] = [];
    for (let i = 1; i <= 5; i++) {
      injector.revive();
      try {
        await injector.at('x');
        seen.push(`ok ${i}`);
      } catch (error) {
        expect(error).toBeInstanceOf(InjectedCrash);
        seen.push(`crash ${(error as InjectedCrash).occurrence}`);
      }
    }
    expect(seen).toEqual(['ok 1', 'crash 2', 'ok 3', 'crash 4', 'ok 5']);
    expect(injector.crashes.map((c) => c.occurrence)).toEqual([2, 4]);
    expect(injector.count('x')).toBe(5);
  });

  it('a crash kills the incarnation: every later call fails until revive()', async () => {
    const injector = new FaultInjector([{ point: 'x', at: 1 }]);
    await expect(injector.at('x')).rejects.toBeInstanceOf(InjectedCrash);
    expect(injector.dead).toBe(true);
    await expect(injector.at('y')).rejects.toBeInstanceOf(InjectedCrash);
    await expect(injector.call(async () => 1)).rejects.toBeInstanceOf(InjectedCrash);
    injector.revive();
    await expect(injector.call(async () => 1)).resolves.toBe(1);
  });

  it('a call in flight when the process dies loses its result', async () => {
    const injector = new FaultInjector([{ point: 'x', at: 1 }]);
    const gate = new Gate();
    const slow = injector.call(async () => {
      await gate.pause({ point: 'slow', occurrence: 1, detail: undefined });
      return 'late';
    });
    await gate.reached;
    await expect(injector.at('x')).rejects.toBeInstanceOf(InjectedCrash);
    gate.open();
    await expect(slow).rejects.toBeInstanceOf(InjectedCrash);
    await injector.quiesce();
  });

  it('match filters and counts only matching occurrences; limit caps the crashes', async () => {
    const injector = new FaultInjector([{ point: 'x', match: (d) => d === 'yes', at: () => true, limit: 2 }]);
    const results: string[] = [];
    for (const d of ['no', 'yes', 'no', 'yes', 'yes']) {
      injector.revive();
      results.push(
        await injector.at('x', d).then(
          () => 'ok',
          (e: InjectedCrash) => `crash#${e.occurrence}`,
        ),
      );
    }
    expect(results).toEqual(['ok', 'crash#1', 'ok', 'crash#2', 'ok']);
  });

  it("'*' and lists of points; spreadOccurrences starts early and spreads out", async () => {
    const injector = new FaultInjector([{ point: '*', at: 2 }]);
    await injector.at('a');
    await expect(injector.at('a')).rejects.toThrow(/a \(occurrence 2\)/);
    injector.revive();
    const listed = new FaultInjector([{ point: ['p', 'q'], at: 1 }]);
    await listed.at('r');
    await expect(listed.at('q')).rejects.toBeInstanceOf(InjectedCrash);
    expect(spreadOccurrences(6)).toEqual([1, 2, 4, 7, 11, 16]);
  });
});

describe('fault wrappers', () => {
  it('sink: crash mid publish delivers the first half only', async () => {
    const sink = new MemorySink();
    const injector = new FaultInjector([{ point: FAULT_POINTS.publishMid, at: 1 }]);
    await expect(faultySink(sink, injector).publish(outputs(5))).rejects.toBeInstanceOf(InjectedCrash);
    expect(sink.values('out')).toEqual([0, 1]);
    injector.revive();
    await faultySink(sink, injector).publish(outputs(5));
    expect(sink.values('out')).toEqual([0, 1, 2, 3, 4]);
  });

  it('backend: crash before commit changes nothing; crash after commit keeps it in the outbox', async () => {
    const backend = new MemoryBackend();
    const commit = {
      checkpoint: { ...initialCheckpoint(SHARD), commitNumber: 1, position: '1' },
      mutations: [{ address: 'op/"k"', value: '1' }],
      outputs: outputs(2),
    };
    const before = new FaultInjector([{ point: FAULT_POINTS.commitBefore, at: 1 }]);
    const b1 = faultyBackend(backend, before);
    const lease = await b1.acquireLease(SHARD, 'me', 0, 1000);
    await expect(b1.commit(lease, commit)).rejects.toBeInstanceOf(InjectedCrash);
    expect(await backend.readCheckpoint(SHARD)).toBeUndefined();
    expect(backend.entries().size).toBe(0);

    const after = new FaultInjector([{ point: FAULT_POINTS.commitAfter, at: 1 }]);
    await expect(faultyBackend(backend, after).commit(lease, commit)).rejects.toBeInstanceOf(InjectedCrash);
    expect((await backend.readCheckpoint(SHARD))?.commitNumber).toBe(1);
    expect((await backend.unpublishedOutputs(SHARD)).map((o) => o.value)).toEqual([0, 1]);
  });

  it('backend: getMany crashes after reading; adapters report their own points through hook', async () => {
    const backend = new MemoryBackend();
    const injector = new FaultInjector([
      { point: FAULT_POINTS.getMany, at: 1 },
      { point: 'adapter.mid-write', at: 1 },
    ]);
    await expect(faultyBackend(backend, injector).getMany(['a'])).rejects.toBeInstanceOf(InjectedCrash);
    expect(backend.reads.calls).toBe(1);
    injector.revive();
    await expect(injector.hook('adapter.mid-write', { part: 1 })).rejects.toBeInstanceOf(InjectedCrash);
    expect(injector.crashes.map((c) => c.point)).toEqual([FAULT_POINTS.getMany, 'adapter.mid-write']);
  });

  it('source: crash after a read returned; the next reader starts where the checkpoint says', async () => {
    const stream = new MemoryStream(1, () => 0);
    for (let i = 0; i < 3; i++) stream.put('k', i, 0);
    const injector = new FaultInjector([{ point: FAULT_POINTS.readAfter, at: 1 }]);
    const reader = await faultySource(stream, injector).openReader(SHARD, { type: 'TRIM_HORIZON' });
    await expect(reader.read(2)).rejects.toBeInstanceOf(InjectedCrash);
    injector.revive();
    const again = await faultySource(stream, injector).openReader(SHARD, { type: 'TRIM_HORIZON' });
    expect((await again.read(10)).records.map((r) => r.data)).toEqual([0, 1, 2]);
  });
});
