/**
 * StreamProcessor: one floe job on AWS. Defines the source stream (or imports one), the state and
 * control tables, the bucket (deltas, large checkpoints, savepoints, dead letters, S3 outputs),
 * the worker, coordinator and savepoint functions (the job's pipeline bundled in by local
 * esbuild), the coordinator's schedule, least-privilege grants, sink destinations, a dashboard
 * and alarms.
 *
 *   new StreamProcessor(stack, 'PageViews', { pipeline: 'examples/page-views.ts', shardCount: 2 });
 *
 * Layout of the tables and the bucket: lib/aws/dynamodb-backend.ts and docs/protocol.md.
 */
import { existsSync, statSync } from 'node:fs';
import { extname, isAbsolute, relative, resolve, sep } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  Annotations,
  ArnFormat,
  Duration,
  Names,
  RemovalPolicy,
  Stack,
  Token,
  Tokenization,
  Validations,
} from 'aws-cdk-lib';
import * as cloudwatch from 'aws-cdk-lib/aws-cloudwatch';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as events from 'aws-cdk-lib/aws-events';
import * as targets from 'aws-cdk-lib/aws-events-targets';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kinesis from 'aws-cdk-lib/aws-kinesis';
import * as lambda from 'aws-cdk-lib/aws-lambda';
import * as nodejs from 'aws-cdk-lib/aws-lambda-nodejs';
import * as logs from 'aws-cdk-lib/aws-logs';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct, type IConstruct } from 'constructs';
import type { DeltaApplyMode } from '../lib/aws/dynamodb-backend.ts';
import { DEFAULT_METRICS_NAMESPACE, JOB_DIMENSION, WorkerMetric } from '../lib/aws/metric-names.ts';
import {
  accountReference,
  allowMissingObjectReads,
  allowObjects,
  DEAD_LETTER_SINK,
  grantObjects,
  type SinkTarget,
} from './sink-target.ts';

/** The floe repository root: functions/ and package-lock.json live here. */
export const FLOE_ROOT = fileURLToPath(new URL('..', import.meta.url));

/** The module id functions/*.ts import the pipeline from; esbuild aliases it to the `pipeline` prop. */
export const PIPELINE_MODULE_ALIAS = '@floe/pipeline';

/** Generations (from `generation` on) whose S3 deltas a lifecycle rule expires. */
export const DELTA_RULE_GENERATIONS = 10;

/** Values of the `deltaApply` prop (lib/aws/dynamodb-backend.ts DELTA_APPLY_MODES). */
const DELTA_APPLY_VALUES: readonly DeltaApplyMode[] = ['items', 'transactions'];

/** Savepoint function: time for a pause, the export and the manifest (the Lambda maximum). */
const SAVEPOINT_TIMEOUT = Duration.minutes(15);
const SAVEPOINT_MEMORY_MIB = 1024;

/** Where the savepoint function writes savepoints (lib/aws/snapshot-s3.ts default prefix). */
const SAVEPOINTS_PREFIX = 'savepoints/';

const IS_STREAM_PROCESSOR = Symbol.for('floe.StreamProcessor');

export interface StreamProcessorProps {
  /**
   * The pipeline module: a .ts or .js file whose default export is a pipeline built with the DSL
   * (e.g. 'examples/page-views.ts'). A relative path is resolved against the floe repository
   * root (the directory of cdk.json); the file must be inside it. It is bundled into both
   * functions.
   */
  readonly pipeline: string;

  /**
   * Job id: scopes state, checkpoints, output ids, bucket prefixes and metrics. 1-64 characters
   * of a-z A-Z 0-9 . _ - starting with a letter or digit.
   * @default - the pipeline file's name without its extension ('page-views' for 'examples/page-views.ts')
   */
  readonly job?: string;

  /**
   * An existing Kinesis stream to read instead of defining one. Partition it by the pipeline's
   * key (see docs/dsl.md, keys and shards). It must be in the processor's region; a stream of
   * another account is read by its ARN, which needs a resource policy on the stream granting
   * the functions' roles read access (and the Lag alarm needs CloudWatch cross-account
   * observability to see that account's metric). A stream encrypted with a customer managed key
   * is imported with its key (`Stream.fromStreamAttributes({ streamArn, encryptionKey })`), so the
   * functions that read records are granted `kms:Decrypt` on it.
   * @default - a stream is defined with `shardCount` shards
   */
  readonly stream?: kinesis.IStream;

  /**
   * Shards of the stream the construct defines (provisioned mode). Only without `stream`.
   * @default 1
   */
  readonly shardCount?: number;

  /**
   * How long the defined stream keeps records (24 hours to 365 days). A replay from a savepoint
   * needs the records after the savepoint to still be in the stream. Only without `stream`.
   * @default Duration.hours(24)
   */
  readonly streamRetention?: Duration;

  /**
   * Where each of the pipeline's sinks goes, by DSL sink name ('*' binds every sink without a
   * binding of its own). A binding's resources are named after its sink, with '/' and line breaks
   * written as '--' (CDK's construct ids): two names that meet that way, such as 'a/b' and 'a--b',
   * are refused.
   * @default - every sink writes NDJSON objects to the bucket under 'outputs/<job>/', and
   * 'floe.dead-letter' under 'dead-letters/<job>/'
   */
  readonly sinks?: Record<string, SinkTarget>;

  /**
   * State generation of a job that has no job record yet. Once the job has one (the first run,
   * a savepoint, a replay into a new generation), the functions run the generation the record
   * names. A whole number from 0, given as a literal (not a token such as a CfnParameter): it
   * names the bucket's delta lifecycle rules and their prefixes, which are fixed at synthesis.
   * @default 0
   */
  readonly generation?: number;

  /**
   * CloudWatch namespace of the worker's metrics (and of the dashboard and alarms).
   * @default 'Floe'
   */
  readonly metricsNamespace?: string;

  /**
   * Worker timeout: one invocation works one shard this long (minus 10 seconds to commit and
   * release its lease), then the coordinator starts the next. 30 seconds to 15 minutes.
   * @default Duration.minutes(5)
   */
  readonly workerTimeout?: Duration;

  /**
   * Commit interval of a worker: the reads of this long share one commit (state, outputs and
   * checkpoint), as Flink's checkpoint interval. Longer means fewer DynamoDB writes per event
   * (each changed key is written once per interval), but outputs are published up to this much
   * later and a crash re-reads up to this much. A worker always commits when its shard is
   * caught up and before its time runs out. 0 to 60 seconds; 0 commits after every read.
   * @default Duration.seconds(1)
   */
  readonly commitInterval?: Duration;

  /**
   * How a worker applies the delta of a large commit to the state table. A commit is large when
   * it has over 100 write actions, about 3.9 MB, or outputs over one 350 KB outbox item
   * (docs/protocol.md); its state mutations and outputs go to S3 first and are committed by one
   * conditional update of the checkpoint. The commit is durable and exactly once either way, and
   * both write every item under the same version condition (a stale writer never overwrites
   * newer state).
   *
   * - `'items'`: one conditional PutItem per changed key, 16 in flight; 1 WCU per KB written.
   * - `'transactions'`: TransactWriteItems of up to 100 keys (under 4 MB), 4 in flight. Each
   *   chunk is applied atomically and a delta takes up to 100 times fewer requests, but
   *   transactional writes cost 2 WCU per KB (twice `'items'`), and concurrent writers of a key
   *   can cancel each other (retried). Choose it when the number of requests or their latency, not
   *   write units, limits how fast large deltas are applied, or when something that reads the
   *   state table directly must never see part of a chunk (it can still see one chunk applied
   *   before another). No other permission is needed: a transaction's puts are authorized as
   *   dynamodb:PutItem.
   *
   * Sets the worker's FLOE_DELTA_APPLY (lib/aws/job.ts; DynamoBackendOptions.deltaApply).
   * @default 'items'
   */
  readonly deltaApply?: DeltaApplyMode;

  /**
   * Worker memory (MiB, 128 to 10240). CPU is proportional to memory.
   * @default 1024
   */
  readonly workerMemorySize?: number;

  /**
   * Keys whose state a worker keeps in memory per keyed operator (1 to 10,000,000). After a
   * commit that leaves more, the least recently used are dropped and read from the state table
   * again when a batch or a timer needs them, so a shard with many keys does not run the worker
   * out of memory. Raise it with `workerMemorySize` when a shard's working set of keys is larger
   * (each cached key takes a few hundred bytes plus its state). Sets FLOE_MAX_CACHED_KEYS.
   * @default 100_000
   */
  readonly maxCachedKeys?: number;

  /**
   * Least time between two GetRecords calls of a worker on a shard,
   * 200 ms to 10 s. A shard serves 5 reads a second to all the consumers of the stream: with n
   * consumers (another floe job on the same stream, for an A/B test, or any other reader) give
   * each n × 200 ms, or they throttle each other (a throttled worker waits 1 s). Each call
   * returns up to 10,000 records, so the 2 MB/s read quota, not this, usually limits throughput.
   * Sets FLOE_MIN_GET_RECORDS_INTERVAL_MS.
   * @default Duration.millis(200)
   */
  readonly readInterval?: Duration;

  /**
   * How often the coordinator runs: it starts a worker for every runnable shard nobody holds.
   * @default events.Schedule.rate(Duration.minutes(1))
   */
  readonly coordinatorSchedule?: events.Schedule;

  /**
   * How long S3 deltas of large commits are kept. A delta is needed only until it is applied
   * (seconds), so this is a safety margin. Applies to the deltas of `generation` and the 9
   * generations after it (replays); deploy with the current generation after more replays.
   * Whole days, at least 1 (an S3 lifecycle expiration counts whole days), e.g.
   * `Duration.days(2)` or `Duration.hours(48)`; a token must be `Duration.days(...)`.
   * @default Duration.days(7)
   */
  readonly deltaRetention?: Duration;

  /**
   * Retention of the functions' log groups.
   * @default logs.RetentionDays.ONE_MONTH
   */
  readonly logRetention?: logs.RetentionDays;

  /**
   * Bucket receiving the S3 server access logs of the processor's bucket (under
   * `processor-bucket/`). The construct adds a statement to its bucket policy letting
   * `logging.s3.amazonaws.com` put them (no ACL: it works with ACLs disabled and without any
   * feature flag); the policy of an imported bucket cannot be changed from the stack, so
   * synthesis warns and you add that statement yourself.
   * @default - a bucket is defined; its objects expire after 90 days
   */
  readonly serverAccessLogsBucket?: s3.IBucket;

  /**
   * What happens to the stream, tables, buckets and log groups when they leave the stack:
   * RETAIN, DESTROY or RETAIN_ON_UPDATE_OR_DELETE. With DESTROY the buckets must be empty for
   * the deletion to succeed. SNAPSHOT is refused: CloudFormation snapshots none of these
   * resource types (the tables have point-in-time recovery instead).
   * @default RemovalPolicy.RETAIN
   */
  readonly removalPolicy?: RemovalPolicy;

  /**
   * Alarm when the workers are this far behind the newest record of a shard (Kinesis iterator
   * age) for 10 minutes. A token (e.g. a CfnParameter) must be given as `Duration.millis(...)`:
   * the alarm's threshold is in milliseconds.
   * @default Duration.minutes(5)
   */
  readonly lagAlarmThreshold?: Duration;

  /**
   * Alarm when a shard's watermark trails processing time by more than this for 15 minutes. A
   * token must be given as `Duration.millis(...)`, as for `lagAlarmThreshold`.
   * @default Duration.minutes(30)
   */
  readonly watermarkLagAlarmThreshold?: Duration;

  /**
   * Alarm when at least this many records go to the dead-letter output within 5 minutes. A whole
   * number from 1, or a token (e.g. a CfnParameter's valueAsNumber), checked by CloudFormation.
   * @default 1
   */
  readonly deadLetterAlarmThreshold?: number;

  /**
   * Actions of every alarm (e.g. an SNS topic action).
   * @default - no actions: alarms show on the dashboard and in the CloudWatch console
   */
  readonly alarmActions?: cloudwatch.IAlarmAction[];
}

/**
 * One floe job deployed on AWS Lambda, Kinesis, DynamoDB and S3.
 */
export class StreamProcessor extends Construct {
  /** Whether `x` is a StreamProcessor. */
  static isStreamProcessor(x: unknown): x is StreamProcessor {
    return typeof x === 'object' && x !== null && IS_STREAM_PROCESSOR in x;
  }

  /** The job id. */
  readonly job: string;
  /** The state generation of a job without a job record (see the `generation` prop). */
  readonly generation: number;
  /** The source stream (defined or imported). */
  readonly stream: kinesis.IStream;
  /** Keyed state: pk = `job#generation#address`. */
  readonly stateTable: dynamodb.Table;
  /** Leases, checkpoints and the outbox: pk = `job#generation`, sk = `shard#…` / `out#…`. */
  readonly controlTable: dynamodb.Table;
  /** Deltas and large checkpoints (`<job>/`), savepoints, dead letters and S3 outputs. */
  readonly bucket: s3.Bucket;
  /** Works one shard per invocation. */
  readonly worker: nodejs.NodejsFunction;
  /** Runs on `coordinatorSchedule` and starts workers. */
  readonly coordinator: nodejs.NodejsFunction;
  /**
   * Takes a savepoint of the job into `s3://<bucket>/savepoints/` when invoked (functions/savepoint.ts;
   * event `{"stop"?: boolean, "id"?: string}`, see docs/operations.md). Nothing invokes it on
   * its own; `grantTakeSavepoint` lets a role invoke it.
   */
  readonly savepointFunction: nodejs.NodejsFunction;
  /** The coordinator's schedule. */
  readonly schedule: events.Rule;
  /** Tables defined by `SinkTarget.newTable`, by sink name. */
  readonly sinkTables: Readonly<Record<string, dynamodb.Table>>;
  /** The job's dashboard. */
  readonly dashboard: cloudwatch.Dashboard;
  /** Lag, watermark lag, dead letters, worker errors, coordinator errors. */
  readonly alarms: readonly cloudwatch.Alarm[];
  /** The metrics namespace. */
  readonly metricsNamespace: string;

  constructor(scope: Construct, id: string, props: StreamProcessorProps) {
    super(scope, id);
    Object.defineProperty(this, IS_STREAM_PROCESSOR, { value: true });
    const v = validate(props);
    this.job = v.job;
    this.generation = v.generation;
    this.metricsNamespace = v.namespace;
    const removalPolicy = v.removalPolicy;

    // --- Source stream.
    if (props.stream !== undefined) {
      this.stream = props.stream;
    } else {
      const stream = new kinesis.Stream(this, 'Stream', {
        shardCount: props.shardCount ?? 1,
        streamMode: kinesis.StreamMode.PROVISIONED,
        retentionPeriod: props.streamRetention ?? Duration.hours(24),
        encryption: kinesis.StreamEncryption.MANAGED,
      });
      stream.applyRemovalPolicy(removalPolicy);
      this.stream = stream;
    }

    // --- Tables (layout: lib/aws/dynamodb-backend.ts).
    const tableDefaults = {
      billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
      encryption: dynamodb.TableEncryption.AWS_MANAGED,
      deletionProtection: removalPolicy !== RemovalPolicy.DESTROY,
      removalPolicy,
    } as const;
    this.stateTable = new dynamodb.Table(this, 'StateTable', {
      ...tableDefaults,
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      // Tombstones of deleted state expire (DynamoBackendOptions.tombstoneTtlSeconds).
      timeToLiveAttribute: 'ttl',
    });
    this.controlTable = new dynamodb.Table(this, 'ControlTable', {
      ...tableDefaults,
      partitionKey: { name: 'pk', type: dynamodb.AttributeType.STRING },
      sortKey: { name: 'sk', type: dynamodb.AttributeType.STRING },
    });

    // --- Bucket.
    const accessLogs =
      props.serverAccessLogsBucket ??
      new s3.Bucket(this, 'AccessLogsBucket', {
        encryption: s3.BucketEncryption.S3_MANAGED,
        enforceSSL: true,
        minimumTLSVersion: 1.2,
        blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
        objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
        lifecycleRules: [{ id: 'expire-access-logs', expiration: Duration.days(90) }],
        removalPolicy,
      });
    if (props.serverAccessLogsBucket === undefined) {
      Validations.of(accessLogs).acknowledge({
        id: 'AwsSolutions-S1',
        reason:
          'This is the server access log bucket of the processor bucket; logging its own accesses into itself would loop.',
      });
    }
    this.bucket = new s3.Bucket(this, 'Bucket', {
      encryption: s3.BucketEncryption.S3_MANAGED,
      enforceSSL: true,
      minimumTLSVersion: 1.2,
      blockPublicAccess: s3.BlockPublicAccess.BLOCK_ALL,
      objectOwnership: s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
      versioned: true,
      // Server access logging is configured below, not with serverAccessLogsBucket (see there).
      lifecycleRules: [
        // Large commits write `<job>/<generation>/deltas/<shard>/<commit>-<fence>.json`; a prefix filter
        // has no wildcard, so one rule per generation: this one and the next ones a replay may
        // switch the job to (the functions follow the job record's generation without a deploy).
        ...Array.from({ length: DELTA_RULE_GENERATIONS }, (_, i) => ({
          id: `expire-deltas-g${this.generation + i}`,
          prefix: `${this.job}/${this.generation + i}/deltas/`,
          expiration: v.deltaRetention,
        })),
        {
          id: 'noncurrent-versions-and-uploads',
          noncurrentVersionExpiration: Duration.days(30),
          abortIncompleteMultipartUploadAfter: Duration.days(1),
          expiredObjectDeleteMarker: true,
        },
      ],
      removalPolicy,
    });
    this.enableAccessLogs(accessLogs, 'processor-bucket/');

    // --- Sinks.
    const sinksScope = new Construct(this, 'Sinks');
    // Each binding's resources go in a construct named after its sink. CDK writes '/' and line
    // breaks in an id as '--', so two sink names may meet in one id: say which, rather than
    // CDK's "There is already a Construct with name".
    const sinkOfScope = new Map<IConstruct, string>();
    const sinkScope = (sinkName: string): Construct => {
      const taken = sinksScope.node.tryFindChild(sinkName);
      if (taken !== undefined) {
        throw new Error(
          `sinks ${JSON.stringify(sinkOfScope.get(taken))} and ${JSON.stringify(sinkName)} would share the construct id ${JSON.stringify(taken.node.id)} (CDK writes '/' and line breaks in an id as '--'); rename one of them in the pipeline`,
        );
      }
      const scope = new Construct(sinksScope, sinkName);
      sinkOfScope.set(scope, sinkName);
      return scope;
    };
    const bound = Object.entries(props.sinks ?? {}).map(([sinkName, target]) => ({
      sinkName,
      config: target.bind({
        scope: sinkScope(sinkName),
        sinkName,
        job: this.job,
        bucket: this.bucket,
        removalPolicy,
      }),
    }));
    const deadLetterPrefix = `dead-letters/${this.job}/`;
    const outputsPrefix = `outputs/${this.job}/`;
    const sinkSpecs = bound.map((b) => `${b.sinkName}=${b.config.destination}`);
    const defaultDeadLetters = !(props.sinks !== undefined && DEAD_LETTER_SINK in props.sinks);
    if (defaultDeadLetters) {
      sinkSpecs.push(`${DEAD_LETTER_SINK}=s3:${this.bucket.bucketName}/${deadLetterPrefix}`);
    }
    const tables: Record<string, dynamodb.Table> = {};
    for (const b of bound) if (b.config.table !== undefined) tables[b.sinkName] = b.config.table;
    this.sinkTables = tables;

    // --- Functions.
    const environment: Record<string, string> = {
      FLOE_JOB: this.job,
      FLOE_STREAM: streamReference(this, this.stream),
      FLOE_STATE_TABLE: this.stateTable.tableName,
      FLOE_CONTROL_TABLE: this.controlTable.tableName,
      FLOE_BUCKET: this.bucket.bucketName,
      FLOE_SINKS: Stack.of(this).toJsonString(sinkSpecs),
      FLOE_GENERATION: String(this.generation),
      FLOE_COMMIT_INTERVAL_MS: v.commitInterval.toMilliseconds().toString(),
      FLOE_MIN_GET_RECORDS_INTERVAL_MS: v.readInterval.toMilliseconds().toString(),
      POWERTOOLS_METRICS_NAMESPACE: this.metricsNamespace,
      POWERTOOLS_LOG_LEVEL: 'INFO',
    };
    const logRetention = props.logRetention ?? logs.RetentionDays.ONE_MONTH;
    const makeFunction = (
      name: 'Worker' | 'Coordinator' | 'Savepoint',
      entry: string,
      options: {
        timeout: Duration;
        memorySize: number;
        serviceName: string;
        /** The function's FLOE_* environment. @default the job environment above */
        baseEnv?: Record<string, string>;
        extraEnv?: Record<string, string>;
      },
    ): nodejs.NodejsFunction => {
      const logGroup = new logs.LogGroup(this, `${name}Logs`, { retention: logRetention, removalPolicy });
      // Own role instead of the AWSLambdaBasicExecutionRole managed policy: logs only to its group.
      const role = new iam.Role(this, `${name}Role`, {
        assumedBy: new iam.ServicePrincipal('lambda.amazonaws.com'),
        description: `floe ${this.job} ${name.toLowerCase()}`,
      });
      logGroup.grantWrite(role);
      const fn = new nodejs.NodejsFunction(this, name, {
        entry: resolve(FLOE_ROOT, entry),
        projectRoot: FLOE_ROOT,
        depsLockFilePath: resolve(FLOE_ROOT, 'package-lock.json'),
        handler: 'handler',
        runtime: lambda.Runtime.NODEJS_22_X,
        architecture: lambda.Architecture.ARM_64,
        timeout: options.timeout,
        memorySize: options.memorySize,
        role,
        logGroup,
        environment: {
          ...(options.baseEnv ?? environment),
          NODE_OPTIONS: nodeOptions(options.memorySize),
          POWERTOOLS_SERVICE_NAME: options.serviceName,
          ...options.extraEnv,
        },
        bundling: {
          format: nodejs.OutputFormat.ESM,
          target: 'node22',
          minify: true,
          sourceMap: true,
          sourcesContent: false,
          mainFields: ['module', 'main'],
          // Some bundled CommonJS dependencies call require(): give the ES module one.
          banner:
            "import { createRequire } from 'node:module';const require = createRequire(import.meta.url);",
          // Bundle the SDK versions the project pins and tests instead of the runtime's.
          bundleAwsSDK: true,
          forceDockerBundling: false,
          esbuildArgs: { '--alias': `${PIPELINE_MODULE_ALIAS}=./${v.pipelineRelative}` },
        },
      });
      Validations.of(fn).acknowledge({
        id: 'AwsSolutions-L1',
        reason:
          'floe targets the nodejs22.x runtime on purpose (the Node 22 line it is built and tested for); a newer runtime is adopted deliberately, not by default.',
      });
      return fn;
    };

    this.worker = makeFunction('Worker', 'functions/worker.ts', {
      timeout: v.workerTimeout,
      memorySize: v.workerMemorySize,
      serviceName: 'floe-worker',
      extraEnv: { FLOE_DELTA_APPLY: v.deltaApply, FLOE_MAX_CACHED_KEYS: String(v.maxCachedKeys) },
    });
    // One invocation per shard; the coordinator restarts a failed worker at its next round, so
    // Lambda's own retries would only compete for the lease.
    this.worker.configureAsyncInvoke({ retryAttempts: 0, maxEventAge: Duration.hours(1) });
    this.coordinator = makeFunction('Coordinator', 'functions/coordinator.ts', {
      timeout: Duration.minutes(1),
      memorySize: 512,
      serviceName: 'floe-coordinator',
      extraEnv: { FLOE_WORKER_FUNCTION: this.worker.functionName },
    });
    // What lib/aws/savepoint-handler.ts reads (awsJobConfigFromEnv): the job's resources. The job
    // record names the generation; no sinks (a savepoint publishes nothing), no metrics.
    this.savepointFunction = makeFunction('Savepoint', 'functions/savepoint.ts', {
      timeout: SAVEPOINT_TIMEOUT,
      memorySize: SAVEPOINT_MEMORY_MIB,
      serviceName: 'floe-savepoint',
      baseEnv: {
        FLOE_JOB: environment.FLOE_JOB!,
        FLOE_STREAM: environment.FLOE_STREAM!,
        FLOE_STATE_TABLE: environment.FLOE_STATE_TABLE!,
        FLOE_CONTROL_TABLE: environment.FLOE_CONTROL_TABLE!,
        FLOE_BUCKET: environment.FLOE_BUCKET!,
        FLOE_GENERATION: environment.FLOE_GENERATION!,
        POWERTOOLS_LOG_LEVEL: environment.POWERTOOLS_LOG_LEVEL!,
      },
    });
    // Meant to be invoked synchronously. An asynchronous invocation that fails is not retried by
    // Lambda: each retry would pause the job again (up to the timeout) without anyone asking.
    this.savepointFunction.configureAsyncInvoke({ retryAttempts: 0, maxEventAge: Duration.hours(1) });

    // --- Grants (the calls lib/aws makes; nothing more).
    const jobPrefix = `${this.job}/`; // deltas and large checkpoints of every generation
    const streamRead = (grantee: iam.IGrantable, actions: string[]): void => {
      this.stream.grant(grantee, ...actions);
      this.stream.encryptionKey?.grantDecrypt(grantee);
    };
    // IAM authorizes each action of a TransactWriteItems as its single-item call (Put: PutItem,
    // Update: UpdateItem, ConditionCheck: ConditionCheckItem). The worker's transactions: the small
    // commit (Update lease, Put outbox, Put state), the outbox item of a delta (ConditionCheck
    // lease, Put outbox) and deltaApply 'transactions' (Put state).
    streamRead(this.worker, ['kinesis:ListShards', 'kinesis:GetShardIterator', 'kinesis:GetRecords']);
    this.stateTable.grant(this.worker, 'dynamodb:BatchGetItem', 'dynamodb:PutItem');
    this.controlTable.grant(
      this.worker,
      'dynamodb:GetItem',
      'dynamodb:PutItem',
      'dynamodb:UpdateItem',
      'dynamodb:DeleteItem',
      'dynamodb:ConditionCheckItem',
      'dynamodb:Query',
    );
    // Unbound sinks go to outputs/<job>/ unless a '*' binding takes them (lib/aws/job.ts).
    const fallbackToOutputs = !(props.sinks !== undefined && '*' in props.sinks);
    grantObjects(
      this.bucket,
      [
        jobPrefix,
        ...(fallbackToOutputs ? [outputsPrefix] : []),
        ...(defaultDeadLetters ? [deadLetterPrefix] : []),
      ],
      this.worker,
    );
    for (const b of bound) b.config.grant(this.worker);

    // The coordinator lists shards and reads no record: no decrypt on the stream's key.
    this.stream.grant(this.coordinator, 'kinesis:ListShards');
    this.controlTable.grant(this.coordinator, 'dynamodb:GetItem', 'dynamodb:Query');
    // The timer-log chunks of a parent shard trimmed from the stream before it finished, which
    // its children inherit (lib/runtime/coordinator.ts shardsAndCheckpoints, withInlineTimers):
    // state items, read with BatchGetItem.
    this.stateTable.grant(this.coordinator, 'dynamodb:BatchGetItem');
    allowObjects(this.coordinator, this.bucket, [jobPrefix], ['s3:GetObject']);
    allowMissingObjectReads(this.coordinator, this.bucket);
    this.coordinator.addToRolePolicy(
      new iam.PolicyStatement({ actions: ['lambda:InvokeFunction'], resources: [this.worker.functionArn] }),
    );

    // The savepoint (lib/runtime/savepoints.ts createSavepoint over lib/aws/savepoints.ts): the job
    // record (GetItem, PutItem), every shard's lease (UpdateItem; a lease holder first redoes a
    // pending delta: PutItem on both tables, and the delta's outbox item is a transaction with a
    // ConditionCheck on the lease item: ConditionCheckItem), the checkpoints (Query; large ones
    // GetObject under `<job>/`; their timer-log chunks, put inline into the manifest,
    // BatchGetItem), the state (Scan), the shards and the record after each position (ListShards,
    // GetShardIterator, GetRecords), and the savepoint files (Get/Put/DeleteObject, ListBucket).
    const savepoint = this.savepointFunction;
    streamRead(savepoint, ['kinesis:ListShards', 'kinesis:GetShardIterator', 'kinesis:GetRecords']);
    this.stateTable.grant(savepoint, 'dynamodb:Scan', 'dynamodb:BatchGetItem', 'dynamodb:PutItem');
    this.controlTable.grant(
      savepoint,
      'dynamodb:GetItem',
      'dynamodb:PutItem',
      'dynamodb:UpdateItem',
      'dynamodb:ConditionCheckItem',
      'dynamodb:Query',
    );
    allowObjects(savepoint, this.bucket, [jobPrefix], ['s3:GetObject']);
    allowObjects(
      savepoint,
      this.bucket,
      [SAVEPOINTS_PREFIX],
      ['s3:GetObject', 's3:PutObject', 's3:DeleteObject'],
    );
    allowMissingObjectReads(savepoint, this.bucket);
    // --- Schedule.
    this.schedule = new events.Rule(this, 'Schedule', {
      description: `Starts the workers of floe job ${this.job}`,
      schedule: props.coordinatorSchedule ?? events.Schedule.rate(Duration.minutes(1)),
      targets: [new targets.LambdaFunction(this.coordinator, { retryAttempts: 0 })],
    });

    // --- Alarms and dashboard.
    const actions = props.alarmActions ?? [];
    const alarmNames: string[] = [];
    const alarm = (
      name: string,
      description: string,
      metric: cloudwatch.IMetric,
      threshold: number,
      evaluationPeriods: number,
    ): cloudwatch.Alarm => {
      // Named, so the dashboard can list the alarms by ARN without referencing their resources.
      const alarmName = `${Names.uniqueResourceName(this, { maxLength: 120, separator: '-', allowedSpecialCharacters: '_.-' })}-${this.job}-${name}`;
      alarmNames.push(alarmName);
      const a = new cloudwatch.Alarm(this, `${name}Alarm`, {
        alarmName,
        alarmDescription: `floe ${this.job}: ${description}`,
        metric,
        threshold,
        evaluationPeriods,
        comparisonOperator: cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
        treatMissingData: cloudwatch.TreatMissingData.NOT_BREACHING,
      });
      for (const action of actions) a.addAlarmAction(action);
      return a;
    };
    const five = Duration.minutes(5);
    const iteratorAge = this.stream.metricGetRecordsIteratorAgeMilliseconds({
      statistic: cloudwatch.Stats.MAXIMUM,
      period: five,
    });
    const { lagThreshold, watermarkThreshold, deadLetterThreshold } = v;
    // A threshold may be a token (a CfnParameter): rendered into the descriptions as a reference.
    const text = (n: number): string => Tokenization.stringifyNumber(n);
    this.alarms = [
      alarm(
        'Lag',
        `the workers are ${text(lagThreshold)} ms or more behind the stream`,
        iteratorAge,
        lagThreshold,
        2,
      ),
      alarm(
        'WatermarkLag',
        `a watermark trails processing time by ${text(watermarkThreshold)} ms or more`,
        this.metricWatermarkLag({ period: five }),
        watermarkThreshold,
        3,
      ),
      alarm(
        'DeadLetters',
        `${text(deadLetterThreshold)} or more records went to the dead-letter output${defaultDeadLetters ? ` (see ${deadLetterPrefix} in the bucket)` : ''}`,
        this.metricDeadLetters({ period: five }),
        deadLetterThreshold,
        1,
      ),
      alarm(
        'WorkerErrors',
        'worker invocations keep failing (see the worker log group)',
        this.worker.metricErrors({ period: five, statistic: cloudwatch.Stats.SUM }),
        1,
        3,
      ),
      alarm(
        'CoordinatorErrors',
        'coordinator invocations keep failing (see the coordinator log group)',
        this.coordinator.metricErrors({ period: five, statistic: cloudwatch.Stats.SUM }),
        1,
        3,
      ),
    ];

    const minute = Duration.minutes(1);
    const graph = (title: string, left: cloudwatch.IMetric[], right: cloudwatch.IMetric[] = []) =>
      new cloudwatch.GraphWidget({ title, left, right, width: 8, height: 6 });
    this.dashboard = new cloudwatch.Dashboard(this, 'Dashboard', {
      defaultInterval: Duration.hours(3),
      widgets: [
        [
          new cloudwatch.TextWidget({
            markdown: `# floe job \`${this.job}\` (generation ${this.generation})\nMetrics: namespace \`${this.metricsNamespace}\`, dimension \`${JOB_DIMENSION}\`. Operations: docs/operations.md.`,
            width: 16,
            height: 2,
          }),
          new cloudwatch.AlarmStatusWidget({
            // By ARN rather than by reference: the dashboard does not depend on the alarm resources.
            alarms: alarmNames.map((alarmName, i) =>
              cloudwatch.Alarm.fromAlarmArn(
                this,
                `DashboardAlarm${i}`,
                Stack.of(this).formatArn({
                  service: 'cloudwatch',
                  resource: 'alarm',
                  resourceName: alarmName,
                  arnFormat: ArnFormat.COLON_RESOURCE_NAME,
                }),
              ),
            ),
            width: 8,
            height: 2,
          }),
        ],
        [
          graph('Records in / out (per minute)', [
            this.metricRecordsIn({ period: minute, label: 'records in' }),
            this.metric(WorkerMetric.recordsOut, { period: minute, label: 'records out' }),
          ]),
          graph('Lag behind the stream (ms)', [
            this.metricMillisBehindLatest({ period: minute, label: 'MillisBehindLatest (max)' }),
            this.stream.metricGetRecordsIteratorAgeMilliseconds({
              statistic: cloudwatch.Stats.MAXIMUM,
              period: minute,
              label: 'Kinesis iterator age (max)',
            }),
          ]),
          graph('Watermark lag (ms)', [
            this.metricWatermarkLag({ period: minute, label: 'watermark lag (max)' }),
          ]),
        ],
        [
          graph('Late and dead-letter records', [
            this.metricLateRecords({ period: minute, label: 'late' }),
            this.metricDeadLetters({ period: minute, label: 'dead letters' }),
          ]),
          graph('Commit latency (ms)', [
            this.metricCommitLatency({ period: minute, statistic: cloudwatch.Stats.p(50), label: 'p50' }),
            this.metricCommitLatency({ period: minute, statistic: cloudwatch.Stats.p(99), label: 'p99' }),
          ]),
          graph(
            'State writes and commits',
            [this.metricStateWrites({ period: minute, label: 'state writes' })],
            [this.metric(WorkerMetric.commits, { period: minute, label: 'commits' })],
          ),
        ],
        [
          graph(
            'Worker invocations',
            [
              this.worker.metricInvocations({ period: minute }),
              this.worker.metricErrors({ period: minute }),
              this.worker.metricThrottles({ period: minute }),
            ],
            [this.worker.metricDuration({ period: minute, statistic: cloudwatch.Stats.MAXIMUM })],
          ),
          graph('Coordinator invocations', [
            this.coordinator.metricInvocations({ period: minute }),
            this.coordinator.metricErrors({ period: minute }),
          ]),
        ],
      ],
    });
  }

  /**
   * Sends the processor bucket's server access logs to `target` under `prefix`, granting S3's
   * log delivery through `target`'s bucket policy. What `serverAccessLogsBucket` does only with
   * the `@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy` feature flag: without it, that prop
   * gives the target bucket the LogDeliveryWrite ACL, which a bucket with ACLs disabled
   * (BucketOwnerEnforced, S3's default and ours) refuses, so synthesis fails. Done here the same
   * way with or without the flag, so the construct works in any app.
   */
  private enableAccessLogs(target: s3.IBucket, prefix: string): void {
    const cfnBucket = this.bucket.node.defaultChild as s3.CfnBucket;
    cfnBucket.loggingConfiguration = { destinationBucketName: target.bucketName, logFilePrefix: prefix };
    target.encryptionKey?.grantEncryptDecrypt(new iam.ServicePrincipal('logging.s3.amazonaws.com'));
    // The statement the flag adds: scoped to this bucket and account when both are in one stack
    // (a condition on a bucket of another stack would make the two stacks depend on each other).
    const sameStack = Stack.of(target) === Stack.of(this.bucket);
    const { statementAdded } = target.addToResourcePolicy(
      new iam.PolicyStatement({
        effect: iam.Effect.ALLOW,
        principals: [new iam.ServicePrincipal('logging.s3.amazonaws.com')],
        actions: ['s3:PutObject'],
        resources: [target.arnForObjects(`${prefix}*`)],
        conditions: sameStack
          ? {
              ArnLike: { 'aws:SourceArn': this.bucket.bucketArn },
              StringEquals: { 'aws:SourceAccount': Stack.of(this.bucket).account },
            }
          : undefined,
      }),
    );
    if (!statementAdded) {
      Annotations.of(this).addWarningV2(
        'floe:accessLogsPolicyNotAdded',
        `the server access log bucket ${target.bucketName} is imported, so its policy cannot be changed here: allow the service principal logging.s3.amazonaws.com to s3:PutObject on ${prefix}* in it, or S3 cannot deliver the access logs of ${this.node.path}/Bucket`,
      );
    }
  }

  /** A worker metric of this job (namespace `metricsNamespace`, dimension Job). @default sum over 5 minutes */
  metric(metricName: string, options: cloudwatch.MetricOptions = {}): cloudwatch.Metric {
    return new cloudwatch.Metric({
      namespace: this.metricsNamespace,
      metricName,
      dimensionsMap: { [JOB_DIMENSION]: this.job },
      statistic: cloudwatch.Stats.SUM,
      ...options,
    });
  }

  /** Input records processed. @default sum over 5 minutes */
  metricRecordsIn(options?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.metric(WorkerMetric.recordsIn, options);
  }

  /** Elements later than the allowed lateness, emitted to a late-data sink. @default sum over 5 minutes */
  metricLateRecords(options?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.metric(WorkerMetric.lateRecords, options);
  }

  /** Records sent to the dead-letter output. @default sum over 5 minutes */
  metricDeadLetters(options?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.metric(WorkerMetric.deadLetters, options);
  }

  /** State items written. @default sum over 5 minutes */
  metricStateWrites(options?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.metric(WorkerMetric.stateWrites, options);
  }

  /** Time of one commit in milliseconds. @default p99 over 5 minutes */
  metricCommitLatency(options?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.metric(WorkerMetric.commitLatency, { statistic: cloudwatch.Stats.p(99), ...options });
  }

  /** Processing time minus the watermark, in milliseconds. @default maximum over 5 minutes */
  metricWatermarkLag(options?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.metric(WorkerMetric.watermarkLag, { statistic: cloudwatch.Stats.MAXIMUM, ...options });
  }

  /** How far readers are behind the newest record of their shard, in milliseconds. @default maximum over 5 minutes */
  metricMillisBehindLatest(options?: cloudwatch.MetricOptions): cloudwatch.Metric {
    return this.metric(WorkerMetric.millisBehindLatest, { statistic: cloudwatch.Stats.MAXIMUM, ...options });
  }

  /** Lets `grantee` put records into the source stream (a producer). */
  grantProduce(grantee: iam.IGrantable): iam.Grant {
    return this.stream.grantWrite(grantee);
  }

  /**
   * Lets `grantee` take savepoints: `lambda:InvokeFunction` on `savepointFunction` (the
   * unqualified function ARN only). The function itself holds the permissions a savepoint needs.
   * @param grantee an IAM identity of this account (a role, user or group)
   */
  grantTakeSavepoint(grantee: iam.IGrantable): iam.Grant {
    const grant = iam.Grant.addToPrincipal({
      grantee,
      actions: ['lambda:InvokeFunction'],
      resourceArns: [this.savepointFunction.functionArn],
    });
    if (!grant.success) {
      throw new Error(
        `grantTakeSavepoint needs an IAM identity that can hold a policy (a role, user or group), got ${grantee.grantPrincipal}; for another principal, call savepointFunction.grantInvoke(...)`,
      );
    }
    return grant;
  }
}

interface Validated {
  readonly job: string;
  readonly generation: number;
  readonly namespace: string;
  readonly pipelineRelative: string;
  readonly workerTimeout: Duration;
  readonly commitInterval: Duration;
  readonly readInterval: Duration;
  readonly workerMemorySize: number;
  readonly maxCachedKeys: number;
  readonly deadLetterThreshold: number;
  /** Alarm thresholds in milliseconds (a token when the prop is one). */
  readonly lagThreshold: number;
  readonly watermarkThreshold: number;
  readonly deltaApply: DeltaApplyMode;
  readonly deltaRetention: Duration;
  readonly removalPolicy: RemovalPolicy;
}

const JOB = /^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$/;
const RESERVED_JOBS = new Set(['outputs', 'dead-letters', 'savepoints']);

/**
 * The source stream as the functions name it: by name in the processor's account, by ARN in
 * another (a name would be looked up in the processor's own account). A stream in another region
 * is refused: the functions' Kinesis client is in the processor's region.
 */
function streamReference(scope: Construct, stream: kinesis.IStream): string {
  return accountReference(
    scope,
    stream,
    stream.streamName,
    stream.streamArn,
    (region, processorRegion) =>
      `stream: the stream ${stream.streamArn} is in region ${region}, but the processor runs in ${processorRegion}; deploy the processor in the stream's region`,
  );
}

/** Rejects invalid props with a message saying what to change. */
function validate(props: StreamProcessorProps): Validated {
  if (props === undefined || props === null || typeof props !== 'object') {
    throw new Error(
      `StreamProcessor needs props with at least { pipeline: 'examples/page-views.ts' }, got ${props}`,
    );
  }
  const { pipeline } = props;
  if (typeof pipeline !== 'string' || pipeline.trim() === '') {
    throw new Error(
      `pipeline must be the path of a pipeline module, e.g. 'examples/page-views.ts', got ${JSON.stringify(pipeline)}`,
    );
  }
  const absolute = resolve(FLOE_ROOT, pipeline);
  const rel = relative(FLOE_ROOT, absolute);
  if (rel === '' || rel.startsWith('..') || isAbsolute(rel)) {
    throw new Error(
      `pipeline must be inside the floe repository ${FLOE_ROOT}, got ${JSON.stringify(pipeline)}`,
    );
  }
  if (!['.ts', '.mts', '.js', '.mjs'].includes(extname(absolute))) {
    throw new Error(`pipeline must be a .ts, .mts, .js or .mjs module, got ${JSON.stringify(pipeline)}`);
  }
  if (!existsSync(absolute) || !statSync(absolute).isFile()) {
    throw new Error(`pipeline module ${JSON.stringify(pipeline)} does not exist (resolved to ${absolute})`);
  }

  const job = props.job ?? fileStem(absolute);
  if (Token.isUnresolved(job)) {
    throw new Error(
      'job must be a literal string known at synthesis, got an unresolved token (e.g. a CfnParameter): it names S3 prefixes, lifecycle rules and alarm names. Pass the id itself, e.g. job: "page-views"',
    );
  }
  if (!JOB.test(job) || RESERVED_JOBS.has(job)) {
    throw new Error(
      `job must be 1-64 characters of a-z A-Z 0-9 . _ - starting with a letter or digit, and not one of ${[...RESERVED_JOBS].join(', ')}; got ${JSON.stringify(job)}${props.job === undefined ? ' (from the pipeline file name: set job explicitly)' : ''}`,
    );
  }

  if (props.stream !== undefined) {
    for (const name of ['shardCount', 'streamRetention'] as const) {
      if (props[name] !== undefined) {
        throw new Error(
          `${name} configures the stream the construct defines; remove it or remove stream (an existing stream keeps its own settings)`,
        );
      }
    }
  }
  if (props.shardCount !== undefined && !Token.isUnresolved(props.shardCount)) {
    checkInteger('shardCount', props.shardCount, 1, 10_000);
  }
  if (props.streamRetention !== undefined) {
    checkDurationUnit(
      'streamRetention',
      props.streamRetention,
      'hours',
      'a Kinesis retention period is whole hours',
    );
  }
  if (props.streamRetention !== undefined && !props.streamRetention.isUnresolved()) {
    const hours = props.streamRetention.toHours({ integral: false });
    if (hours < 24 || hours > 8760) {
      throw new Error(`streamRetention must be between 24 hours and 365 days, got ${props.streamRetention}`);
    }
  }

  const generation = props.generation ?? 0;
  if (Token.isUnresolved(generation)) {
    throw new Error(
      'generation must be a literal number known at synthesis, got an unresolved token (e.g. a CfnParameter): it names the S3 lifecycle rules that expire the deltas of that generation and the 9 after it, and an S3 prefix cannot be computed at deploy time. Pass the number itself, e.g. generation: 3',
    );
  }
  checkInteger('generation', generation, 0, Number.MAX_SAFE_INTEGER);

  const namespace = props.metricsNamespace ?? DEFAULT_METRICS_NAMESPACE;
  // CloudWatch's characters (space included); CloudFormation refuses a leading colon. A token
  // (a CfnParameter) is checked by CloudFormation at deploy time.
  if (
    !Token.isUnresolved(namespace) &&
    (!/^[A-Za-z0-9._\-/#: ]{1,255}$/.test(namespace) ||
      namespace.trim() === '' ||
      namespace.startsWith(':') ||
      namespace.startsWith('AWS/'))
  ) {
    throw new Error(
      `metricsNamespace must be 1-255 characters of a-z A-Z 0-9 . _ - / # : and space, not blank, and not start with ':' or 'AWS/', got ${JSON.stringify(namespace)}`,
    );
  }

  const workerTimeout = props.workerTimeout ?? Duration.minutes(5);
  checkDurationUnit('workerTimeout', workerTimeout, 'seconds', 'a Lambda timeout is whole seconds');
  if (!workerTimeout.isUnresolved()) {
    const seconds = workerTimeout.toSeconds({ integral: false });
    if (seconds < 30 || seconds > 900) {
      throw new Error(
        `workerTimeout must be between 30 seconds and 15 minutes (10 seconds of it are kept to commit and release the lease), got ${workerTimeout}`,
      );
    }
  }
  const commitInterval = props.commitInterval ?? Duration.seconds(1);
  checkDurationUnit('commitInterval', commitInterval, 'milliseconds', 'the worker is given milliseconds');
  if (!commitInterval.isUnresolved()) {
    const ms = commitInterval.toMilliseconds({ integral: false });
    if (!Number.isInteger(ms) || ms < 0 || ms > 60_000) {
      throw new Error(
        `commitInterval must be whole milliseconds from 0 to 60 seconds (outputs wait for the commit), got ${commitInterval}`,
      );
    }
  }
  const readInterval = props.readInterval ?? Duration.millis(200);
  checkDurationUnit('readInterval', readInterval, 'milliseconds', 'the worker is given milliseconds');
  if (!readInterval.isUnresolved()) {
    const ms = readInterval.toMilliseconds({ integral: false });
    if (!Number.isInteger(ms) || ms < 200 || ms > 10_000) {
      throw new Error(
        `readInterval must be whole milliseconds from 200 ms (a shard serves 5 reads a second) to 10 seconds, got ${readInterval}; with n consumers of the stream use n × 200 ms`,
      );
    }
  }
  const deltaApply = props.deltaApply ?? 'items';
  if (!DELTA_APPLY_VALUES.includes(deltaApply)) {
    throw new Error(
      `deltaApply must be 'items' (one conditional PutItem per key, 1 WCU per KB) or 'transactions' (atomic chunks of up to 100 keys, 2 WCU per KB), got ${JSON.stringify(deltaApply)}`,
    );
  }
  const workerMemorySize = props.workerMemorySize ?? 1024;
  if (!Token.isUnresolved(workerMemorySize)) checkInteger('workerMemorySize', workerMemorySize, 128, 10_240);
  const maxCachedKeys = props.maxCachedKeys ?? 100_000;
  if (!Token.isUnresolved(maxCachedKeys)) checkInteger('maxCachedKeys', maxCachedKeys, 1, 10_000_000);

  const deltaRetention = props.deltaRetention ?? Duration.days(7);
  if (deltaRetention.isUnresolved()) {
    checkDurationUnit(
      'deltaRetention',
      deltaRetention,
      'days',
      'an S3 lifecycle expiration counts whole days',
    );
  } else {
    const days = deltaRetention.toDays({ integral: false });
    if (!Number.isInteger(days) || days < 1) {
      throw new Error(
        `deltaRetention must be a whole number of days, at least 1 (an S3 lifecycle expiration counts whole days), got ${deltaRetention}; e.g. Duration.days(${Math.max(1, Math.ceil(days))})`,
      );
    }
  }

  const removalPolicy = props.removalPolicy ?? RemovalPolicy.RETAIN;
  if (removalPolicy === RemovalPolicy.SNAPSHOT) {
    throw new Error(
      'removalPolicy SNAPSHOT is not supported: CloudFormation snapshots none of the resources of a StreamProcessor (stream, tables, buckets, log groups); use RETAIN or DESTROY (or RETAIN_ON_UPDATE_OR_DELETE)',
    );
  }
  if (
    ![RemovalPolicy.RETAIN, RemovalPolicy.DESTROY, RemovalPolicy.RETAIN_ON_UPDATE_OR_DELETE].includes(
      removalPolicy,
    )
  ) {
    throw new Error(
      `removalPolicy must be RemovalPolicy.RETAIN, DESTROY or RETAIN_ON_UPDATE_OR_DELETE, got ${JSON.stringify(removalPolicy)}`,
    );
  }

  // Alarm thresholds may be tokens: CloudFormation checks them, as it does for any Alarm.
  const deadLetterThreshold = props.deadLetterAlarmThreshold ?? 1;
  if (!Token.isUnresolved(deadLetterThreshold)) {
    checkInteger('deadLetterAlarmThreshold', deadLetterThreshold, 1, Number.MAX_SAFE_INTEGER);
  }
  const thresholdMillis = (
    name: 'lagAlarmThreshold' | 'watermarkLagAlarmThreshold',
    fallback: Duration,
  ): number => {
    const d = props[name] ?? fallback;
    if (d.isUnresolved()) {
      try {
        return d.toMilliseconds();
      } catch {
        throw new Error(
          `${name} from a token must be given as Duration.millis(...) (the alarm threshold is in milliseconds and a token cannot be converted), got ${describeDuration(d)}`,
        );
      }
    }
    if (d.toMilliseconds({ integral: false }) <= 0) {
      throw new Error(`${name} must be a positive duration, got ${d}`);
    }
    return d.toMilliseconds({ integral: false });
  };
  const lagThreshold = thresholdMillis('lagAlarmThreshold', Duration.minutes(5));
  const watermarkThreshold = thresholdMillis('watermarkLagAlarmThreshold', Duration.minutes(30));

  if (props.sinks !== undefined) {
    if (props.sinks === null || typeof props.sinks !== 'object' || Array.isArray(props.sinks)) {
      throw new Error(
        `sinks must map sink names to SinkTarget.newTable(...) / .table(...) / .stream(...) / .bucket(...), got ${JSON.stringify(props.sinks)}`,
      );
    }
    for (const [name, target] of Object.entries(props.sinks)) {
      if (name.trim() === '' || name !== name.trim() || name.includes('=')) {
        throw new Error(
          `sink names must be non-empty, without surrounding spaces or '=', got ${JSON.stringify(name)}`,
        );
      }
      if (target === null || typeof target !== 'object' || typeof target.bind !== 'function') {
        throw new Error(
          `sink ${JSON.stringify(name)} must be bound with SinkTarget.newTable(...), .table(...), .stream(...), .bucket(...) or .externalBucket(...), got ${JSON.stringify(target)}`,
        );
      }
    }
  }

  return {
    job,
    generation,
    namespace,
    pipelineRelative: rel.split(sep).join('/'),
    workerTimeout,
    commitInterval,
    readInterval,
    workerMemorySize,
    maxCachedKeys,
    deadLetterThreshold,
    lagThreshold,
    watermarkThreshold,
    deltaApply,
    deltaRetention,
    removalPolicy,
  };
}

function checkInteger(name: string, value: number, min: number, max: number): void {
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min || value > max) {
    throw new Error(`${name} must be a whole number from ${min} to ${max}, got ${JSON.stringify(value)}`);
  }
}

/** 'Duration.hours(12)', or 'Duration.hours(<token>)' for a token (its number is an encoding). */
/**
 * A duration rendered in whole `unit`s: a token converts only when given in that unit
 * (Duration.seconds(param.valueAsNumber)), a literal only when it is a whole number of them.
 * CDK's own error would not name the prop.
 */
function checkDurationUnit(
  prop: string,
  d: Duration,
  unit: 'milliseconds' | 'seconds' | 'hours' | 'days',
  why: string,
): void {
  try {
    if (unit === 'milliseconds') d.toMilliseconds();
    else if (unit === 'seconds') d.toSeconds();
    else if (unit === 'hours') d.toHours();
    else d.toDays();
  } catch {
    const factory = {
      milliseconds: 'Duration.millis',
      seconds: 'Duration.seconds',
      hours: 'Duration.hours',
      days: 'Duration.days',
    }[unit];
    throw new Error(
      d.isUnresolved()
        ? `${prop} from a token must be given as ${factory}(...) (${why}), got ${describeDuration(d)}`
        : `${prop} must be a whole number of ${unit} (${why}), got ${d}`,
    );
  }
}

function describeDuration(d: Duration): string {
  return d.isUnresolved() ? d.toString().replace(/\(.*\)$/, '(<token>)') : d.toString();
}

function fileStem(path: string): string {
  const base = path.split(/[\\/]/).pop() ?? path;
  return base.slice(0, base.length - extname(base).length);
}

/**
 * NODE_OPTIONS of a floe function. A larger young generation than V8's default (16 MiB
 * semi-spaces) lets a batch's short-lived state (accumulators, serialized entries, outputs) die
 * before a scavenge instead of being copied and promoted: bench/core measures about 1.5x the
 * events/s at 64 MiB. It scales with the function's memory (1/16 of it, 16 to 64 MiB).
 */
export function nodeOptions(memorySize: number): string {
  const flags = ['--enable-source-maps'];
  if (!Token.isUnresolved(memorySize)) {
    const semiSpace = Math.min(64, Math.max(16, Math.floor(memorySize / 16)));
    if (semiSpace > 16) flags.push(`--max-semi-space-size=${semiSpace}`);
  }
  return flags.join(' ');
}
