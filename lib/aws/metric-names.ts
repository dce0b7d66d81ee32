/**
 * The CloudWatch metrics the worker emits (embedded metric format, through Powertools Metrics)
 * and that the StreamProcessor construct's dashboard and alarms read. One module, no imports,
 * so the Lambda bundle and the CDK app agree on every name.
 */

/** Namespace used when POWERTOOLS_METRICS_NAMESPACE is not set. */
export const DEFAULT_METRICS_NAMESPACE = 'Floe';

/** The only dimension of every worker metric: the job id. */
export const JOB_DIMENSION = 'Job';

export const WorkerMetric = {
  /** Input records processed (committed), Count. */
  recordsIn: 'RecordsIn',
  /** Elements published to sinks, Count. */
  recordsOut: 'RecordsOut',
  /** Elements emitted to a window's late-data sink (later than the allowed lateness), Count. */
  lateRecords: 'LateRecords',
  /** Records sent to floe.dead-letter (undecodable or failing user code), Count. */
  deadLetters: 'DeadLetters',
  /** Commits (one per changed batch), Count. */
  commits: 'Commits',
  /** Time of one commit (transaction, or S3 delta + commit point + apply), Milliseconds. */
  commitLatency: 'CommitLatency',
  /** State items written (puts and deletes), Count. */
  stateWrites: 'StateWrites',
  /** Processing time minus the shard's watermark at the last commit, Milliseconds. */
  watermarkLag: 'WatermarkLag',
  /** How far the reader is behind the newest record of its shard (Kinesis MillisBehindLatest), Milliseconds. */
  millisBehindLatest: 'MillisBehindLatest',
} as const;

export type WorkerMetricName = (typeof WorkerMetric)[keyof typeof WorkerMetric];
