import { Metrics } from '@aws-lambda-powertools/metrics';
import { afterEach, describe, expect, it, vi } from 'vitest';
import pageViews from '../../examples/page-views.ts';
import {
  type Commit,
  compile,
  DEAD_LETTER_SINK,
  type Lease,
  MemoryBackend,
  type Sink,
  SinkOutputError,
} from '../core/index.ts';
import type { JobRuntime, ShardProgress } from '../runtime/job.ts';
import { RoutingSink } from '../runtime/routing-sink.ts';
import { DEFAULT_METRICS_NAMESPACE, WorkerMetric } from './metric-names.ts';
import { WorkerMetrics } from './worker-metrics.ts';

type Emf = Record<string, unknown> & {
  _aws: {
    CloudWatchMetrics: Array<{
      Namespace: string;
      Dimensions: string[][];
      Metrics: Array<{ Name: string; Unit: string }>;
    }>;
  };
};

/** Captures the EMF lines Powertools writes to stdout. */
function captureEmf(): { lines: Emf[]; restore: () => void } {
  const lines: Emf[] = [];
  const spy = vi.spyOn(process.stdout, 'write').mockImplementation((chunk: string | Uint8Array) => {
    for (const line of String(chunk).split('\n')) {
      if (line.includes('"_aws"')) lines.push(JSON.parse(line) as Emf);
    }
    return true;
  });
  return { lines, restore: () => spy.mockRestore() };
}

const plan = compile(pageViews);
const progress = (p: Partial<ShardProgress>): ShardProgress => ({
  shardId: 'shardId-000000000000',
  position: '1',
  watermark: 0,
  millisBehindLatest: 0,
  records: 0,
  outputs: 0,
  deadLetters: 0,
  commitNumber: 1,
  ...p,
});

function job(): JobRuntime {
  return { job: 'page-views', plan, backend: new MemoryBackend() } as unknown as JobRuntime;
}

describe('WorkerMetrics', () => {
  let capture: ReturnType<typeof captureEmf> | undefined;
  afterEach(() => {
    capture?.restore();
    vi.unstubAllEnvs();
  });

  it('emits EMF in namespace Floe with the Job dimension only', () => {
    vi.stubEnv('POWERTOOLS_METRICS_NAMESPACE', '');
    capture = captureEmf();
    const m = new WorkerMetrics({ job: 'page-views', plan, clock: () => 10_000 });
    m.onCommit(
      progress({ records: 5, outputs: 2, deadLetters: 1, watermark: 4_000, millisBehindLatest: 1_500 }),
    );
    m.finish({ caughtUp: false });
    const [line] = capture.lines;
    expect(capture.lines).toHaveLength(1);
    expect(line!._aws.CloudWatchMetrics[0]).toMatchObject({
      Namespace: DEFAULT_METRICS_NAMESPACE,
      Dimensions: [['Job']],
    });
    expect(line).toMatchObject({
      Job: 'page-views',
      [WorkerMetric.recordsIn]: 5,
      [WorkerMetric.recordsOut]: 2,
      [WorkerMetric.deadLetters]: 1,
      [WorkerMetric.commits]: 1,
      [WorkerMetric.lateRecords]: 0,
      [WorkerMetric.stateWrites]: 0,
      [WorkerMetric.millisBehindLatest]: 1_500,
      [WorkerMetric.watermarkLag]: 6_000,
    });
    expect(line).not.toHaveProperty('service');
    const units = Object.fromEntries(line!._aws.CloudWatchMetrics[0]!.Metrics.map((d) => [d.Name, d.Unit]));
    expect(units).toMatchObject({
      RecordsIn: 'Count',
      WatermarkLag: 'Milliseconds',
      MillisBehindLatest: 'Milliseconds',
    });
  });

  it('uses POWERTOOLS_METRICS_NAMESPACE (set by the construct)', () => {
    vi.stubEnv('POWERTOOLS_METRICS_NAMESPACE', 'Team/Floe');
    capture = captureEmf();
    new WorkerMetrics({ job: 'j', plan }).finish();
    expect(capture.lines[0]?._aws.CloudWatchMetrics[0]?.Namespace).toBe('Team/Floe');
  });

  it('times commits and counts state writes and late outputs of the instrumented backend', async () => {
    capture = captureEmf();
    const m = new WorkerMetrics({ job: 'page-views', plan });
    const original = job();
    const commits: Commit[] = [];
    const backend = original.backend as MemoryBackend;
    backend.commit = async (_lease: Lease, c: Commit) => {
      commits.push(c);
    };
    const instrumented = m.instrument(original);
    expect(instrumented.backend).not.toBe(backend);
    expect(instrumented.plan).toBe(plan);
    // Other methods still reach the real backend (bound to it).
    expect(await instrumented.backend.readCheckpoint('shardId-000000000000')).toBeUndefined();
    const lease: Lease = { shardId: 's', owner: 'o', fence: 1, expiresAt: 0 };
    await instrumented.backend.commit(lease, {
      checkpoint: {} as Commit['checkpoint'],
      mutations: [
        { address: 'a/1', value: '1' },
        { address: 'a/2', value: null },
      ],
      outputs: [
        { id: 'j/s/1/0', sink: 'late-page-views', value: {} },
        { id: 'j/s/1/1', sink: 'page-view-counts', value: {} },
        { id: 'j/s/1/2', sink: 'late-page-views', value: {} },
      ],
    });
    expect(commits).toHaveLength(1);
    m.onCommit(progress({ records: 3, outputs: 3 }));
    m.finish({ caughtUp: true });
    const line = capture.lines[0]!;
    expect(line).toMatchObject({
      [WorkerMetric.stateWrites]: 2,
      [WorkerMetric.lateRecords]: 2,
      [WorkerMetric.millisBehindLatest]: 0,
    });
    expect(typeof line[WorkerMetric.commitLatency]).toBe('number');
  });

  it('counts the outputs a RoutingSink dead-letters because their sink rejects them', async () => {
    capture = captureEmf();
    const rejecting: Sink = {
      publish: async (outputs) => {
        throw new SinkOutputError('too big', { outputId: outputs[0]!.id });
      },
    };
    const sink = new RoutingSink({ big: rejecting, [DEAD_LETTER_SINK]: { publish: async () => {} } });
    const m = new WorkerMetrics({ job: 'j', plan });
    const instrumented = m.instrument({ ...job(), sink });
    await instrumented.sink.publish([{ id: 'j/s/1/0', sink: 'big', value: 1 }]);
    m.onCommit(progress({ deadLetters: 1 }));
    m.finish();
    expect(capture.lines[0]![WorkerMetric.deadLetters]).toBe(2);
  });

  it('flushes at most once per interval while running, and resets the counters', () => {
    capture = captureEmf();
    let now = 0;
    const m = new WorkerMetrics({ job: 'j', plan, flushIntervalMs: 60_000, clock: () => now });
    m.onCommit(progress({ records: 1 }));
    now = 30_000;
    m.onCommit(progress({ records: 2 }));
    expect(capture.lines).toHaveLength(0);
    now = 61_000;
    m.onCommit(progress({ records: 4 }));
    expect(capture.lines).toHaveLength(1);
    expect(capture.lines[0]![WorkerMetric.recordsIn]).toBe(7);
    m.finish();
    expect(capture.lines).toHaveLength(2);
    expect(capture.lines[1]![WorkerMetric.recordsIn]).toBe(0);
    expect(capture.lines[1]![WorkerMetric.commits]).toBe(0);
  });

  it('accepts a Metrics instance (e.g. with its own namespace)', () => {
    capture = captureEmf();
    const metrics = new Metrics({ namespace: 'Custom', serviceName: 'x' });
    new WorkerMetrics({ job: 'j', plan, metrics }).finish();
    expect(capture.lines[0]?._aws.CloudWatchMetrics[0]?.Namespace).toBe('Custom');
    expect(capture.lines[0]?.Job).toBe('j');
  });
});
