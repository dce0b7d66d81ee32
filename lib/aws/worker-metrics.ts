/**
 * The worker's CloudWatch metrics, written as embedded metric format (EMF) lines to stdout by
 * Powertools Metrics: Lambda ships them to CloudWatch Logs and CloudWatch turns them into metrics
 * (no PutMetricData call, no extra permission). Names: ./metric-names.ts.
 *
 * Counters accumulate per commit and are flushed at most every `flushIntervalMs` and at the end
 * of the invocation, so a five-minute invocation shows up on the dashboard within a minute.
 * Commit latencies are kept as individual values (EMF value arrays), so percentiles work.
 */
import { Metrics, MetricUnit } from '@aws-lambda-powertools/metrics';
import type { Commit, Lease, PipelinePlan } from '../core/index.ts';
import type { JobRuntime, ShardProgress } from '../runtime/job.ts';
import { RoutingSink } from '../runtime/routing-sink.ts';
import { DEFAULT_METRICS_NAMESPACE, JOB_DIMENSION, WorkerMetric } from './metric-names.ts';

export interface WorkerMetricsOptions {
  readonly job: string;
  readonly plan: PipelinePlan;
  /**
   * Where metrics go.
   * @default - a Metrics instance in namespace POWERTOOLS_METRICS_NAMESPACE (else 'Floe')
   */
  readonly metrics?: Metrics;
  /** Flush accumulated metrics at most this often while the worker runs. @default 60_000 */
  readonly flushIntervalMs?: number;
  /** @default Date.now */
  readonly clock?: () => number;
}

/** Records one worker invocation's metrics; see the module comment. */
export class WorkerMetrics {
  readonly metrics: Metrics;
  private readonly lateSinks: ReadonlySet<string>;
  private readonly clock: () => number;
  private readonly flushIntervalMs: number;
  private lastFlush: number;
  private recordsIn = 0;
  private recordsOut = 0;
  private late = 0;
  private deadLetters = 0;
  private commits = 0;
  private stateWrites = 0;
  private watermark: number | undefined;
  private millisBehindLatest: number | undefined;

  constructor(options: WorkerMetricsOptions) {
    this.metrics =
      options.metrics ??
      new Metrics({
        namespace: process.env.POWERTOOLS_METRICS_NAMESPACE || DEFAULT_METRICS_NAMESPACE,
        serviceName: 'floe-worker',
      });
    // One dimension, the job: what the dashboard and the alarms of the construct select.
    this.metrics.clearDefaultDimensions();
    this.metrics.setDefaultDimensions({ [JOB_DIMENSION]: options.job });
    const late = new Set<string>();
    for (const op of options.plan.operators) {
      const name = op.node.lateOutput;
      if (name !== undefined && !op.sideOutputs.has(name)) late.add(name);
    }
    this.lateSinks = late;
    this.clock = options.clock ?? Date.now;
    this.flushIntervalMs = options.flushIntervalMs ?? 60_000;
    this.lastFlush = this.clock();
  }

  /**
   * The same job whose backend's commits are timed and counted (state writes, late outputs), and
   * whose outputs its sinks reject (dead-lettered by a RoutingSink) count as dead letters.
   */
  instrument<J extends JobRuntime>(job: J): J {
    if (job.sink instanceof RoutingSink) {
      job.sink.onRejected((deadLetters) => {
        this.deadLetters += deadLetters.length;
      });
    }
    const backend = job.backend;
    const commit = async (lease: Lease, c: Commit): Promise<void> => {
      const started = performance.now();
      await backend.commit(lease, c);
      this.metrics.addMetric(
        WorkerMetric.commitLatency,
        MetricUnit.Milliseconds,
        Math.round((performance.now() - started) * 100) / 100,
      );
      this.stateWrites += c.mutations.length;
      for (const o of c.outputs) if (this.lateSinks.has(o.sink)) this.late++;
    };
    const instrumented = new Proxy(backend, {
      get(target, property) {
        if (property === 'commit') return commit;
        const value = Reflect.get(target, property, target) as unknown;
        return typeof value === 'function' ? (value as (...args: unknown[]) => unknown).bind(target) : value;
      },
    });
    return { ...job, backend: instrumented } as J;
  }

  /** Pass as the worker's onCommit (after the commit is published). */
  onCommit(progress: ShardProgress): void {
    this.commits++;
    this.recordsIn += progress.records;
    this.recordsOut += progress.outputs;
    this.deadLetters += progress.deadLetters;
    this.watermark = progress.watermark;
    this.millisBehindLatest = progress.millisBehindLatest;
    if (this.clock() - this.lastFlush >= this.flushIntervalMs) this.flush();
  }

  /** Flushes what is left at the end of an invocation; a caught-up shard is 0 ms behind. */
  finish(result?: { readonly caughtUp: boolean }): void {
    if (result?.caughtUp) this.millisBehindLatest = 0;
    this.flush();
  }

  private flush(): void {
    const m = this.metrics;
    m.addMetric(WorkerMetric.recordsIn, MetricUnit.Count, this.recordsIn);
    m.addMetric(WorkerMetric.recordsOut, MetricUnit.Count, this.recordsOut);
    m.addMetric(WorkerMetric.lateRecords, MetricUnit.Count, this.late);
    m.addMetric(WorkerMetric.deadLetters, MetricUnit.Count, this.deadLetters);
    m.addMetric(WorkerMetric.commits, MetricUnit.Count, this.commits);
    m.addMetric(WorkerMetric.stateWrites, MetricUnit.Count, this.stateWrites);
    if (this.millisBehindLatest !== undefined) {
      m.addMetric(WorkerMetric.millisBehindLatest, MetricUnit.Milliseconds, this.millisBehindLatest);
    }
    if (this.watermark !== undefined && Number.isFinite(this.watermark)) {
      m.addMetric(
        WorkerMetric.watermarkLag,
        MetricUnit.Milliseconds,
        Math.max(0, this.clock() - this.watermark),
      );
    }
    m.publishStoredMetrics();
    this.recordsIn = this.recordsOut = this.late = this.deadLetters = this.commits = this.stateWrites = 0;
    this.lastFlush = this.clock();
  }
}
