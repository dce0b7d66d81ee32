/**
 * StreamProcessor template tests: resources, grants, alarms and dashboard, prop validation, the
 * cdk-nag AwsSolutions pack (no unacknowledged finding, every acknowledgment justified), and one
 * synthesis with real esbuild bundling whose output is loaded and checked.
 */
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { App, CfnParameter, Duration, RemovalPolicy, Stack, Validations } from 'aws-cdk-lib';
import { Annotations, Match, Template } from 'aws-cdk-lib/assertions';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import * as events from 'aws-cdk-lib/aws-events';
import * as iam from 'aws-cdk-lib/aws-iam';
import * as kinesis from 'aws-cdk-lib/aws-kinesis';
import * as kms from 'aws-cdk-lib/aws-kms';
import * as s3 from 'aws-cdk-lib/aws-s3';
import { AwsSolutionsChecks } from 'cdk-nag';
import type { IConstruct } from 'constructs';
import { describe, expect, it } from 'vitest';
import { DELTA_APPLY_MODES } from '../lib/aws/dynamodb-backend.ts';
import { awsJobConfigFromEnv } from '../lib/aws/job.ts';
import { WorkerMetric } from '../lib/aws/metric-names.ts';
import { parseSinkBindings } from '../lib/aws/sinks-config.ts';
import { PageViewsStack } from './page-views-stack.ts';
import { SinkTarget } from './sink-target.ts';
import { nodeOptions, StreamProcessor, type StreamProcessorProps } from './stream-processor.ts';
import { testApp, tmpOutdir } from './test-support.ts';

type Json = Record<string, unknown>;

function exampleTemplate(): { stack: PageViewsStack; template: Template } {
  const app = testApp();
  const stack = new PageViewsStack(app, 'Example');
  return { stack, template: Template.fromStack(stack) };
}

function processorStack(props: Partial<StreamProcessorProps> = {}): {
  stack: Stack;
  processor: StreamProcessor;
} {
  const app = testApp();
  const stack = new Stack(app, 'Test');
  const processor = new StreamProcessor(stack, 'Job', { pipeline: 'examples/page-views.ts', ...props });
  return { stack, processor };
}

/** A Number parameter's value: a token, unknown until deployment. */
function numberParameter(stack: Stack, id: string): number {
  return new CfnParameter(stack, id, { type: 'Number' }).valueAsNumber;
}

/** The statements of the IAM policy attached to a role, by the role's logical id prefix. */
function policyStatements(template: Template, roleIdPrefix: string): Json[] {
  const policies = template.findResources('AWS::IAM::Policy');
  const entry = Object.entries(policies).find(([id]) => id.startsWith(`${roleIdPrefix}DefaultPolicy`));
  if (entry === undefined) throw new Error(`no policy for role ${roleIdPrefix}`);
  return (entry[1] as { Properties: { PolicyDocument: { Statement: Json[] } } }).Properties.PolicyDocument
    .Statement;
}

const actionsOf = (statements: Json[]): string[] =>
  statements.flatMap((s) => (Array.isArray(s.Action) ? (s.Action as string[]) : [s.Action as string])).sort();

function functionEnv(template: Template, idPrefix: string): Json {
  const fns = template.findResources('AWS::Lambda::Function');
  const entry = Object.entries(fns).find(([id]) => id.startsWith(idPrefix));
  if (entry === undefined) throw new Error(`no function ${idPrefix}`);
  return (entry[1] as { Properties: { Environment: { Variables: Json } } }).Properties.Environment.Variables;
}

describe('StreamProcessor resources (example stack)', () => {
  const { stack, template } = exampleTemplate();

  it('defines the source stream: 2 shards, provisioned, encrypted with the AWS managed key, 24 h', () => {
    template.resourceCountIs('AWS::Kinesis::Stream', 1);
    template.hasResourceProperties('AWS::Kinesis::Stream', {
      ShardCount: 2,
      StreamModeDetails: { StreamMode: 'PROVISIONED' },
      RetentionPeriodHours: 24,
      StreamEncryption: { EncryptionType: 'KMS', KeyId: 'alias/aws/kinesis' },
    });
    template.hasResource('AWS::Kinesis::Stream', { DeletionPolicy: 'Retain', UpdateReplacePolicy: 'Retain' });
  });

  it('defines state and control tables: on demand, point-in-time recovery, the backend key layout', () => {
    const common = {
      BillingMode: 'PAY_PER_REQUEST',
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      SSESpecification: { SSEEnabled: true },
      DeletionProtectionEnabled: true,
    };
    template.hasResourceProperties('AWS::DynamoDB::Table', {
      ...common,
      KeySchema: [{ AttributeName: 'pk', KeyType: 'HASH' }],
      AttributeDefinitions: [{ AttributeName: 'pk', AttributeType: 'S' }],
      TimeToLiveSpecification: { AttributeName: 'ttl', Enabled: true },
    });
    template.hasResourceProperties('AWS::DynamoDB::Table', {
      ...common,
      KeySchema: [
        { AttributeName: 'pk', KeyType: 'HASH' },
        { AttributeName: 'sk', KeyType: 'RANGE' },
      ],
    });
    // The sink table of page-view-counts: (page, windowStart).
    template.hasResourceProperties('AWS::DynamoDB::Table', {
      BillingMode: 'PAY_PER_REQUEST',
      PointInTimeRecoverySpecification: { PointInTimeRecoveryEnabled: true },
      KeySchema: [
        { AttributeName: 'page', KeyType: 'HASH' },
        { AttributeName: 'windowStart', KeyType: 'RANGE' },
      ],
      AttributeDefinitions: Match.arrayWith([
        { AttributeName: 'page', AttributeType: 'S' },
        { AttributeName: 'windowStart', AttributeType: 'N' },
      ]),
    });
    template.resourceCountIs('AWS::DynamoDB::Table', 3);
    for (const table of Object.values(template.findResources('AWS::DynamoDB::Table'))) {
      expect(table).toMatchObject({ DeletionPolicy: 'Retain' });
    }
  });

  it('defines the bucket: encrypted, versioned, public access blocked, access-logged, lifecycle on deltas', () => {
    const bucketId = stack.getLogicalId(stack.processor.bucket.node.defaultChild as s3.CfnBucket);
    const bucket = template.findResources('AWS::S3::Bucket')[bucketId] as { Properties: Json };
    expect(bucket.Properties).toMatchObject({
      BucketEncryption: {
        ServerSideEncryptionConfiguration: [{ ServerSideEncryptionByDefault: { SSEAlgorithm: 'AES256' } }],
      },
      PublicAccessBlockConfiguration: {
        BlockPublicAcls: true,
        BlockPublicPolicy: true,
        IgnorePublicAcls: true,
        RestrictPublicBuckets: true,
      },
      VersioningConfiguration: { Status: 'Enabled' },
      OwnershipControls: { Rules: [{ ObjectOwnership: 'BucketOwnerEnforced' }] },
      LoggingConfiguration: { LogFilePrefix: 'processor-bucket/' },
    });
    const rules = (bucket.Properties.LifecycleConfiguration as { Rules: Json[] }).Rules;
    // Deltas of generation 0 and of the generations replays may switch to.
    const deltaRules = rules.filter((r) => String(r.Id).startsWith('expire-deltas'));
    expect(deltaRules).toHaveLength(10);
    expect(deltaRules[0]).toMatchObject({
      Id: 'expire-deltas-g0',
      Prefix: 'page-views/0/deltas/',
      ExpirationInDays: 7,
    });
    expect(deltaRules[9]).toMatchObject({ Prefix: 'page-views/9/deltas/', ExpirationInDays: 7 });
    expect(rules).toContainEqual(
      expect.objectContaining({
        NoncurrentVersionExpiration: { NoncurrentDays: 30 },
        AbortIncompleteMultipartUpload: { DaysAfterInitiation: 1 },
      }),
    );
    template.resourceCountIs('AWS::S3::Bucket', 2); // the bucket and its access log bucket
  });

  it('enforces TLS on both buckets', () => {
    const policies = Object.values(template.findResources('AWS::S3::BucketPolicy'));
    expect(policies).toHaveLength(2);
    for (const policy of policies) {
      expect(
        (policy as { Properties: { PolicyDocument: { Statement: Json[] } } }).Properties.PolicyDocument
          .Statement,
      ).toEqual(
        expect.arrayContaining([
          expect.objectContaining({
            Effect: 'Deny',
            Action: 's3:*',
            Condition: { Bool: { 'aws:SecureTransport': 'false' } },
          }),
          expect.objectContaining({
            Effect: 'Deny',
            Action: 's3:*',
            Condition: { NumericLessThan: { 's3:TlsVersion': 1.2 } },
          }),
        ]),
      );
    }
  });

  it('defines worker, coordinator and savepoint as nodejs22.x arm64 functions with the job environment', () => {
    template.resourceCountIs('AWS::Lambda::Function', 3);
    template.allResourcesProperties('AWS::Lambda::Function', {
      Runtime: 'nodejs22.x',
      Architectures: ['arm64'],
      Handler: 'index.handler',
    });
    template.hasResourceProperties('AWS::Lambda::Function', { Timeout: 300, MemorySize: 1024 });
    template.hasResourceProperties('AWS::Lambda::Function', { Timeout: 60, MemorySize: 512 });
    const worker = functionEnv(template, 'PageViewsWorker');
    expect(worker).toMatchObject({
      FLOE_JOB: 'page-views',
      FLOE_STREAM: { Ref: expect.stringMatching(/^PageViewsStream/) },
      FLOE_STATE_TABLE: { Ref: expect.stringMatching(/^PageViewsStateTable/) },
      FLOE_CONTROL_TABLE: { Ref: expect.stringMatching(/^PageViewsControlTable/) },
      FLOE_BUCKET: { Ref: expect.stringMatching(/^PageViewsBucket/) },
      FLOE_GENERATION: '0',
      POWERTOOLS_METRICS_NAMESPACE: 'Floe',
      POWERTOOLS_SERVICE_NAME: 'floe-worker',
      FLOE_COMMIT_INTERVAL_MS: '1000',
      FLOE_MIN_GET_RECORDS_INTERVAL_MS: '200',
      FLOE_DELTA_APPLY: 'items',
      FLOE_MAX_CACHED_KEYS: '100000',
      // 1024 MiB: 64 MiB semi-spaces (bench/core); the coordinator's 512 MiB: 32.
      NODE_OPTIONS: '--enable-source-maps --max-semi-space-size=64',
    });
    expect(worker).not.toHaveProperty('FLOE_PIPELINE_MODULE');
    expect(worker).not.toHaveProperty('FLOE_WORKER_FUNCTION');
    const coordinator = functionEnv(template, 'PageViewsCoordinator');
    expect(coordinator).toMatchObject({
      FLOE_JOB: 'page-views',
      FLOE_WORKER_FUNCTION: { Ref: expect.stringMatching(/^PageViewsWorker/) },
      NODE_OPTIONS: '--enable-source-maps --max-semi-space-size=32',
    });
    expect(coordinator).not.toHaveProperty('FLOE_DELTA_APPLY');
    // Each function logs to its own log group with a retention.
    template.resourceCountIs('AWS::Logs::LogGroup', 3);
    template.allResourcesProperties('AWS::Logs::LogGroup', { RetentionInDays: 30 });
  });

  it('renders the sink bindings into FLOE_SINKS in the grammar of lib/aws/sinks-config.ts', () => {
    const env = functionEnv(template, 'PageViewsWorker');
    // Replace each CloudFormation reference by a plausible physical name, then parse.
    const joined = env.FLOE_SINKS as { 'Fn::Join': [string, Array<string | { Ref: string }>] };
    const text = joined['Fn::Join'][1]
      .map((part) => (typeof part === 'string' ? part : part.Ref.toLowerCase().slice(0, 40)))
      .join('');
    const bindings = parseSinkBindings(JSON.parse(text) as string[]);
    expect(bindings.map((b) => [b.sink, b.type])).toEqual([
      ['page-view-counts', 'dynamodb'],
      ['late-page-views', 's3'],
      ['floe.dead-letter', 's3'],
    ]);
    expect(bindings[0]).toMatchObject({ key: ['page', 'windowStart'] });
    expect(bindings[1]).toMatchObject({ prefix: 'late/page-views/' });
    expect(bindings[2]).toMatchObject({ prefix: 'dead-letters/page-views/' });
  });

  it('defines the savepoint function: 15 minutes, 1024 MiB, only the job resources in its environment', () => {
    const fns = template.findResources('AWS::Lambda::Function');
    const savepoint = Object.entries(fns).find(([id]) => id.startsWith('PageViewsSavepoint'));
    expect(savepoint).toBeDefined();
    expect((savepoint![1] as { Properties: Json }).Properties).toMatchObject({
      Runtime: 'nodejs22.x',
      Handler: 'index.handler',
      Timeout: 900,
      MemorySize: 1024,
      Role: { 'Fn::GetAtt': [expect.stringMatching(/^PageViewsSavepointRole/), 'Arn'] },
      LoggingConfig: { LogGroup: { Ref: expect.stringMatching(/^PageViewsSavepointLogs/) } },
    });
    // What lib/aws/savepoint-handler.ts reads (awsJobConfigFromEnv), and nothing else.
    expect(functionEnv(template, 'PageViewsSavepoint')).toEqual({
      FLOE_JOB: 'page-views',
      FLOE_STREAM: { Ref: expect.stringMatching(/^PageViewsStream/) },
      FLOE_STATE_TABLE: { Ref: expect.stringMatching(/^PageViewsStateTable/) },
      FLOE_CONTROL_TABLE: { Ref: expect.stringMatching(/^PageViewsControlTable/) },
      FLOE_BUCKET: { Ref: expect.stringMatching(/^PageViewsBucket/) },
      FLOE_GENERATION: '0',
      POWERTOOLS_LOG_LEVEL: 'INFO',
      POWERTOOLS_SERVICE_NAME: 'floe-savepoint',
      NODE_OPTIONS: '--enable-source-maps --max-semi-space-size=64',
    });
    // The handler's configuration reads it (references resolved to plausible names).
    const env = functionEnv(template, 'PageViewsSavepoint');
    const deployed = Object.fromEntries(
      Object.entries(env).map(([k, v]) => [k, typeof v === 'string' ? v : `deployed-${k}`]),
    );
    expect(awsJobConfigFromEnv(deployed)).toEqual({
      job: 'page-views',
      stream: 'deployed-FLOE_STREAM',
      stateTable: 'deployed-FLOE_STATE_TABLE',
      controlTable: 'deployed-FLOE_CONTROL_TABLE',
      bucket: 'deployed-FLOE_BUCKET',
      sinks: [],
      generation: 0,
    });
    // An asynchronous invocation is not retried by Lambda.
    template.hasResourceProperties('AWS::Lambda::EventInvokeConfig', {
      FunctionName: { Ref: Match.stringLikeRegexp('PageViewsSavepoint') },
      MaximumRetryAttempts: 0,
    });
    // Nothing invokes it on its own: no schedule, no resource policy.
    const permissions = JSON.stringify(template.findResources('AWS::Lambda::Permission'));
    expect(permissions).not.toContain('PageViewsSavepoint');
    expect(JSON.stringify(template.findResources('AWS::Events::Rule'))).not.toContain('PageViewsSavepoint');
  });

  it('invokes the worker asynchronously without Lambda retries (the coordinator restarts it)', () => {
    template.hasResourceProperties('AWS::Lambda::EventInvokeConfig', {
      FunctionName: { Ref: Match.stringLikeRegexp('PageViewsWorker') },
      MaximumRetryAttempts: 0,
    });
  });

  it('runs the coordinator every minute', () => {
    template.hasResourceProperties('AWS::Events::Rule', {
      ScheduleExpression: 'rate(1 minute)',
      State: 'ENABLED',
      Targets: [
        Match.objectLike({
          Arn: { 'Fn::GetAtt': [Match.stringLikeRegexp('PageViewsCoordinator'), 'Arn'] },
          RetryPolicy: { MaximumRetryAttempts: 0 },
        }),
      ],
    });
    template.hasResourceProperties('AWS::Lambda::Permission', {
      Action: 'lambda:InvokeFunction',
      Principal: 'events.amazonaws.com',
      FunctionName: { 'Fn::GetAtt': [Match.stringLikeRegexp('PageViewsCoordinator'), 'Arn'] },
    });
  });

  it('outputs what an operator needs', () => {
    for (const name of [
      'Job',
      'StreamName',
      'StateTableName',
      'ControlTableName',
      'BucketName',
      'WorkerFunctionName',
      'CoordinatorFunctionName',
      'SavepointFunctionName',
      'PageViewCountsTableName',
      'DashboardName',
    ]) {
      template.hasOutput(name, {});
    }
  });
});

describe('StreamProcessor grants (least privilege)', () => {
  const { template } = exampleTemplate();
  const worker = policyStatements(template, 'PageViewsWorkerRole');
  const coordinator = policyStatements(template, 'PageViewsCoordinatorRole');
  const savepoint = policyStatements(template, 'PageViewsSavepointRole');

  it('uses no managed policy and no wildcard action or "*" resource', () => {
    for (const role of Object.values(template.findResources('AWS::IAM::Role'))) {
      expect((role as { Properties: Json }).Properties.ManagedPolicyArns).toBeUndefined();
    }
    for (const s of [...worker, ...coordinator, ...savepoint]) {
      expect(actionsOf([s]).every((a) => !a.includes('*'))).toBe(true);
      expect(s.Resource).not.toBe('*');
      expect(s.Effect).toBe('Allow');
    }
  });

  it('gives the worker exactly the calls of the Kinesis source, the DynamoDB + S3 backend and its sinks', () => {
    const by = (resourceLike: RegExp): string[] =>
      actionsOf(worker.filter((s) => resourceLike.test(JSON.stringify(s.Resource))));
    expect(by(/PageViewsWorkerLogs/)).toEqual(['logs:CreateLogStream', 'logs:PutLogEvents']);
    expect(by(/PageViewsStream/)).toEqual([
      'kinesis:GetRecords',
      'kinesis:GetShardIterator',
      'kinesis:ListShards',
    ]);
    expect(by(/PageViewsStateTable/)).toEqual(['dynamodb:BatchGetItem', 'dynamodb:PutItem']);
    // ConditionCheckItem: the outbox item of a delta commit is a TransactWriteItems with a
    // ConditionCheck on the lease item (DynamoBackend.writeDeltaOutbox), authorized per action.
    // No BatchWriteItem: no worker path batch-writes the control table (only dropScope does).
    expect(by(/PageViewsControlTable/)).toEqual([
      'dynamodb:ConditionCheckItem',
      'dynamodb:DeleteItem',
      'dynamodb:GetItem',
      'dynamodb:PutItem',
      'dynamodb:Query',
      'dynamodb:UpdateItem',
    ]);
    expect(by(/PageViewsSinkspageviewcountsTable/)).toEqual(['dynamodb:BatchWriteItem', 'dynamodb:PutItem']);
    const objects = worker.find(
      (s) => JSON.stringify(s.Action) === JSON.stringify(['s3:GetObject', 's3:PutObject']),
    );
    const prefixes = ((objects?.Resource ?? []) as Json[]).map(
      (r) => JSON.stringify(r).match(/"\/([^"]*)\*"/)?.[1],
    );
    expect(prefixes.sort()).toEqual([
      'dead-letters/page-views/',
      'late/page-views/',
      'outputs/page-views/',
      'page-views/',
    ]);
    expect(worker).toContainEqual(
      expect.objectContaining({
        Action: 's3:ListBucket',
        Resource: { 'Fn::GetAtt': [expect.any(String), 'Arn'] },
      }),
    );
    expect(actionsOf(worker)).not.toContain('lambda:InvokeFunction');
  });

  it('gives the coordinator listing, checkpoint reads and invoking the worker only', () => {
    expect(actionsOf(coordinator)).toEqual([
      'dynamodb:BatchGetItem',
      'dynamodb:GetItem',
      'dynamodb:Query',
      'kinesis:ListShards',
      'lambda:InvokeFunction',
      'logs:CreateLogStream',
      'logs:PutLogEvents',
      's3:GetObject',
      's3:ListBucket',
    ]);
    expect(coordinator).toContainEqual(
      expect.objectContaining({
        Action: 'lambda:InvokeFunction',
        Resource: { 'Fn::GetAtt': [expect.stringMatching(/^PageViewsWorker/), 'Arn'] },
      }),
    );
  });

  it("lets the coordinator read timer-log chunks in the state table (a trimmed parent's, which its children inherit)", () => {
    // coordinateRound -> shardsAndCheckpoints -> withInlineTimers -> DynamoBackend.getMany: a
    // BatchGetItem on the state table, and nothing else there.
    const by = (resourceLike: RegExp): string[] =>
      actionsOf(coordinator.filter((s) => resourceLike.test(JSON.stringify(s.Resource))));
    expect(by(/PageViewsStateTable/)).toEqual(['dynamodb:BatchGetItem']);
    expect(by(/PageViewsControlTable/)).toEqual(['dynamodb:GetItem', 'dynamodb:Query']);
    expect(by(/PageViewsStream/)).toEqual(['kinesis:ListShards']);
  });

  it('gives the savepoint function exactly the calls of a savepoint: job record, leases, checkpoints, state, savepoint files', () => {
    const by = (resourceLike: RegExp): string[] =>
      actionsOf(savepoint.filter((s) => resourceLike.test(JSON.stringify(s.Resource))));
    expect(by(/PageViewsSavepointLogs/)).toEqual(['logs:CreateLogStream', 'logs:PutLogEvents']);
    expect(by(/PageViewsStream/)).toEqual([
      'kinesis:GetRecords',
      'kinesis:GetShardIterator',
      'kinesis:ListShards',
    ]);
    // Scan exports the state, BatchGetItem reads timer-log chunks, PutItem only redoes a pending
    // delta when it takes a lease; that redo writes the delta's outbox item in a transaction with
    // a ConditionCheck on the lease item (ConditionCheckItem).
    expect(by(/PageViewsStateTable/)).toEqual(['dynamodb:BatchGetItem', 'dynamodb:PutItem', 'dynamodb:Scan']);
    expect(by(/PageViewsControlTable/)).toEqual([
      'dynamodb:ConditionCheckItem',
      'dynamodb:GetItem',
      'dynamodb:PutItem',
      'dynamodb:Query',
      'dynamodb:UpdateItem',
    ]);
    const objectStatements = savepoint.filter((s) => actionsOf([s]).some((a) => a.endsWith('Object')));
    const byPrefix = Object.fromEntries(
      objectStatements.map((s) => [JSON.stringify(s.Resource).match(/"\/([^"]*)\*"/)?.[1], actionsOf([s])]),
    );
    expect(byPrefix).toEqual({
      'page-views/': ['s3:GetObject'], // large checkpoints and pending deltas
      'savepoints/': ['s3:DeleteObject', 's3:GetObject', 's3:PutObject'],
    });
    expect(savepoint).toContainEqual(
      expect.objectContaining({
        Action: 's3:ListBucket',
        Resource: { 'Fn::GetAtt': [expect.stringMatching(/^PageViewsBucket/), 'Arn'] },
      }),
    );
    // It writes no sink, publishes no output, invokes nothing.
    expect(actionsOf(savepoint)).toEqual([
      'dynamodb:BatchGetItem',
      'dynamodb:ConditionCheckItem',
      'dynamodb:GetItem',
      'dynamodb:PutItem',
      'dynamodb:PutItem',
      'dynamodb:Query',
      'dynamodb:Scan',
      'dynamodb:UpdateItem',
      'kinesis:GetRecords',
      'kinesis:GetShardIterator',
      'kinesis:ListShards',
      'logs:CreateLogStream',
      'logs:PutLogEvents',
      's3:DeleteObject',
      's3:GetObject',
      's3:GetObject',
      's3:ListBucket',
      's3:PutObject',
    ]);
  });
});

describe('StreamProcessor alarms and dashboard', () => {
  const { template } = exampleTemplate();

  it('defines lag, watermark lag, dead-letter and error alarms', () => {
    template.resourceCountIs('AWS::CloudWatch::Alarm', 5);
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: 'AWS/Kinesis',
      MetricName: 'GetRecords.IteratorAgeMilliseconds',
      Statistic: 'Maximum',
      Threshold: 300_000,
      EvaluationPeriods: 2,
      ComparisonOperator: 'GreaterThanOrEqualToThreshold',
      TreatMissingData: 'notBreaching',
    });
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: 'Floe',
      MetricName: WorkerMetric.watermarkLag,
      Dimensions: [{ Name: 'Job', Value: 'page-views' }],
      Statistic: 'Maximum',
      Threshold: 1_800_000,
    });
    template.hasResourceProperties('AWS::CloudWatch::Alarm', {
      Namespace: 'Floe',
      MetricName: WorkerMetric.deadLetters,
      Dimensions: [{ Name: 'Job', Value: 'page-views' }],
      Statistic: 'Sum',
      Threshold: 1,
      EvaluationPeriods: 1,
    });
    for (const fn of ['PageViewsWorker', 'PageViewsCoordinator']) {
      template.hasResourceProperties('AWS::CloudWatch::Alarm', {
        Namespace: 'AWS/Lambda',
        MetricName: 'Errors',
        Dimensions: [{ Name: 'FunctionName', Value: { Ref: Match.stringLikeRegexp(fn) } }],
        Statistic: 'Sum',
        Threshold: 1,
        EvaluationPeriods: 3,
      });
    }
  });

  it('names the alarms, and lists them on the dashboard by ARN without depending on them', () => {
    for (const name of ['Lag', 'WatermarkLag', 'DeadLetters', 'WorkerErrors', 'CoordinatorErrors']) {
      template.hasResourceProperties('AWS::CloudWatch::Alarm', {
        AlarmName: Match.stringLikeRegexp(`^Example-PageViews-[0-9A-F]{8}-page-views-${name}$`),
      });
    }
    const dashboard = Object.values(template.findResources('AWS::CloudWatch::Dashboard'))[0] as Json;
    const body = JSON.stringify(dashboard);
    expect(body).toContain(':alarm:Example-');
    expect(body).not.toMatch(/"Fn::GetAtt":\["[A-Za-z0-9]*Alarm/);
    expect(dashboard.DependsOn).toBeUndefined();
  });

  it('graphs every worker metric, the iterator age and the functions', () => {
    const dashboards = Object.values(template.findResources('AWS::CloudWatch::Dashboard'));
    expect(dashboards).toHaveLength(1);
    const body = JSON.stringify((dashboards[0] as { Properties: Json }).Properties.DashboardBody);
    for (const metric of Object.values(WorkerMetric)) expect(body).toContain(`\\"${metric}\\"`);
    expect(body).toContain('GetRecords.IteratorAgeMilliseconds');
    expect(body).toContain('p99');
    expect(body).toContain('\\"Errors\\"');
    expect(body).toContain('alarm'); // the alarm status widget
  });

  it('sends alarms to the given actions and uses the given thresholds', () => {
    const { stack } = processorStack({
      alarmActions: [{ bind: () => ({ alarmActionArn: 'arn:aws:sns:us-east-1:111111111111:ops' }) }],
      lagAlarmThreshold: Duration.minutes(1),
      watermarkLagAlarmThreshold: Duration.hours(2),
      deadLetterAlarmThreshold: 10,
      metricsNamespace: 'Team/Floe',
    });
    const t = Template.fromStack(stack);
    t.allResourcesProperties('AWS::CloudWatch::Alarm', {
      AlarmActions: ['arn:aws:sns:us-east-1:111111111111:ops'],
    });
    t.hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: 'GetRecords.IteratorAgeMilliseconds',
      Threshold: 60_000,
    });
    t.hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: 'WatermarkLag',
      Namespace: 'Team/Floe',
      Threshold: 7_200_000,
    });
    t.hasResourceProperties('AWS::CloudWatch::Alarm', { MetricName: 'DeadLetters', Threshold: 10 });
    t.hasResourceProperties('AWS::Lambda::Function', {
      Environment: { Variables: Match.objectLike({ POWERTOOLS_METRICS_NAMESPACE: 'Team/Floe' }) },
    });
  });

  it('accepts alarm thresholds from tokens (CloudFormation parameters), as Alarm does', () => {
    const app = testApp();
    const stack = new Stack(app, 'Tokens');
    new StreamProcessor(stack, 'Job', {
      pipeline: 'examples/page-views.ts',
      deadLetterAlarmThreshold: numberParameter(stack, 'DeadLetters'),
      lagAlarmThreshold: Duration.millis(numberParameter(stack, 'LagMs')),
      watermarkLagAlarmThreshold: Duration.millis(numberParameter(stack, 'WatermarkLagMs')),
    });
    const t = Template.fromStack(stack);
    t.hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: 'DeadLetters',
      Threshold: { Ref: 'DeadLetters' },
      // The description names the parameter's value, not the token's encoding.
      AlarmDescription: {
        'Fn::Join': [
          '',
          Match.arrayWith([{ Ref: 'DeadLetters' }, Match.stringLikeRegexp('or more records')]),
        ],
      },
    });
    t.hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: 'GetRecords.IteratorAgeMilliseconds',
      Threshold: { Ref: 'LagMs' },
    });
    t.hasResourceProperties('AWS::CloudWatch::Alarm', {
      MetricName: 'WatermarkLag',
      Threshold: { Ref: 'WatermarkLagMs' },
    });
  });

  it('exposes metric methods in the namespace with the Job dimension', () => {
    const { stack, processor } = processorStack({ job: 'clicks', metricsNamespace: 'Acme' });
    expect(stack.resolve(processor.metricRecordsIn().toMetricConfig().metricStat)).toMatchObject({
      namespace: 'Acme',
      metricName: 'RecordsIn',
      dimensions: [{ name: 'Job', value: 'clicks' }],
      statistic: 'Sum',
    });
    expect(processor.metricCommitLatency().toMetricConfig().metricStat?.statistic).toBe('p99');
    expect(processor.metricMillisBehindLatest().toMetricConfig().metricStat?.statistic).toBe('Maximum');
  });
});

describe('StreamProcessor options', () => {
  it('reads an existing stream instead of defining one', () => {
    const app = testApp();
    const stack = new Stack(app, 'Imported', { env: { account: '111111111111', region: 'eu-west-1' } });
    const stream = kinesis.Stream.fromStreamArn(
      stack,
      'S',
      'arn:aws:kinesis:eu-west-1:111111111111:stream/clicks',
    );
    new StreamProcessor(stack, 'Job', { pipeline: 'examples/page-views.ts', stream });
    const t = Template.fromStack(stack);
    t.resourceCountIs('AWS::Kinesis::Stream', 0);
    t.hasResourceProperties('AWS::Lambda::Function', {
      Environment: { Variables: Match.objectLike({ FLOE_STREAM: 'clicks' }) },
    });
    t.hasResourceProperties('AWS::IAM::Policy', {
      PolicyDocument: {
        Statement: Match.arrayWith([
          Match.objectLike({
            Action: ['kinesis:GetRecords', 'kinesis:GetShardIterator', 'kinesis:ListShards'],
            Resource: 'arn:aws:kinesis:eu-west-1:111111111111:stream/clicks',
          }),
        ]),
      },
    });
  });

  it("grants decrypt on an existing stream's key to the functions that read records, not to the coordinator", () => {
    const app = testApp();
    const stack = new Stack(app, 'KeyStream', { env: { account: '111111111111', region: 'eu-west-1' } });
    const key = new kms.Key(stack, 'StreamKey');
    const stream = kinesis.Stream.fromStreamAttributes(stack, 'S', {
      streamArn: 'arn:aws:kinesis:eu-west-1:111111111111:stream/clicks',
      encryptionKey: key,
    });
    new StreamProcessor(stack, 'Job', { pipeline: 'examples/page-views.ts', stream });
    const t = Template.fromStack(stack);
    const keyActions = (role: string): string[] =>
      actionsOf(policyStatements(t, role).filter((s) => /StreamKey/.test(JSON.stringify(s.Resource))));
    // GetRecords returns records the stream encrypted with the key.
    expect(keyActions('JobWorkerRole')).toEqual(['kms:Decrypt']);
    expect(keyActions('JobSavepointRole')).toEqual(['kms:Decrypt']);
    // ListShards returns shard metadata only.
    expect(keyActions('JobCoordinatorRole')).toEqual([]);
  });

  it("reads a stream of another account by its ARN (a name would be looked up in the processor's account)", () => {
    const app = testApp();
    const stack = new Stack(app, 'CrossAccount', { env: { account: '111111111111', region: 'eu-west-1' } });
    const arn = 'arn:aws:kinesis:eu-west-1:999999999999:stream/clicks';
    const stream = kinesis.Stream.fromStreamArn(stack, 'S', arn);
    new StreamProcessor(stack, 'Job', { pipeline: 'examples/page-views.ts', stream });
    const t = Template.fromStack(stack);
    const streams = Object.values(t.findResources('AWS::Lambda::Function')).map(
      (f) =>
        (f as { Properties: { Environment?: { Variables?: { FLOE_STREAM?: unknown } } } }).Properties
          .Environment?.Variables?.FLOE_STREAM,
    );
    expect(streams.filter((v) => v !== undefined)).toEqual([arn, arn, arn]);
  });

  it('refuses a stream of another region, naming both', () => {
    const app = testApp();
    const stack = new Stack(app, 'CrossRegion', { env: { account: '111111111111', region: 'eu-west-1' } });
    const stream = kinesis.Stream.fromStreamArn(
      stack,
      'S',
      'arn:aws:kinesis:us-east-1:111111111111:stream/clicks',
    );
    expect(() => new StreamProcessor(stack, 'Job', { pipeline: 'examples/page-views.ts', stream })).toThrow(
      "stream: the stream arn:aws:kinesis:us-east-1:111111111111:stream/clicks is in region us-east-1, but the processor runs in eu-west-1; deploy the processor in the stream's region",
    );
  });

  it("binds floe.dead-letter to the default dead letters' prefix of the bucket, which other sinks may not use", () => {
    expect(() =>
      processorStack({
        sinks: { 'floe.dead-letter': SinkTarget.bucket({ prefix: 'dead-letters/page-views/' }) },
      }),
    ).not.toThrow();
  });

  it('takes a metrics namespace from a token, and one with spaces', () => {
    const app = testApp();
    const stack = new Stack(app, 'Namespaces');
    const ns = new CfnParameter(stack, 'Ns').valueAsString;
    new StreamProcessor(stack, 'Job', { pipeline: 'examples/page-views.ts', metricsNamespace: ns });
    Template.fromStack(stack).hasResourceProperties('AWS::Lambda::Function', {
      Environment: { Variables: Match.objectLike({ POWERTOOLS_METRICS_NAMESPACE: { Ref: 'Ns' } }) },
    });
    expect(() => processorStack({ metricsNamespace: 'Acme Corp/Streams' })).not.toThrow();
  });

  it('sizes the young generation from the function memory', () => {
    expect(nodeOptions(128)).toBe('--enable-source-maps');
    expect(nodeOptions(256)).toBe('--enable-source-maps');
    expect(nodeOptions(512)).toBe('--enable-source-maps --max-semi-space-size=32');
    expect(nodeOptions(1024)).toBe('--enable-source-maps --max-semi-space-size=64');
    expect(nodeOptions(10_240)).toBe('--enable-source-maps --max-semi-space-size=64');
  });

  it('applies job, generation, timeouts, memory, schedule, retention and removal policy', () => {
    const { stack } = processorStack({
      job: 'pv2',
      generation: 3,
      shardCount: 4,
      streamRetention: Duration.days(7),
      workerTimeout: Duration.minutes(15),
      workerMemorySize: 2048,
      maxCachedKeys: 500_000,
      commitInterval: Duration.millis(250),
      readInterval: Duration.millis(400),
      coordinatorSchedule: events.Schedule.rate(Duration.minutes(2)),
      deltaRetention: Duration.days(2),
      removalPolicy: RemovalPolicy.DESTROY,
    });
    const t = Template.fromStack(stack);
    t.hasResourceProperties('AWS::Kinesis::Stream', { ShardCount: 4, RetentionPeriodHours: 168 });
    t.hasResourceProperties('AWS::Lambda::Function', {
      Timeout: 900,
      MemorySize: 2048,
      Environment: {
        Variables: Match.objectLike({
          FLOE_JOB: 'pv2',
          FLOE_GENERATION: '3',
          FLOE_COMMIT_INTERVAL_MS: '250',
          FLOE_MIN_GET_RECORDS_INTERVAL_MS: '400',
          FLOE_MAX_CACHED_KEYS: '500000',
        }),
      },
    });
    t.hasResourceProperties('AWS::Events::Rule', { ScheduleExpression: 'rate(2 minutes)' });
    t.hasResourceProperties('AWS::S3::Bucket', {
      LifecycleConfiguration: {
        Rules: Match.arrayWith([
          Match.objectLike({ Prefix: 'pv2/3/deltas/', ExpirationInDays: 2 }),
          Match.objectLike({ Prefix: 'pv2/12/deltas/', ExpirationInDays: 2 }),
        ]),
      },
    });
    for (const type of [
      'AWS::DynamoDB::Table',
      'AWS::S3::Bucket',
      'AWS::Kinesis::Stream',
      'AWS::Logs::LogGroup',
    ]) {
      for (const r of Object.values(t.findResources(type)))
        expect(r).toMatchObject({ DeletionPolicy: 'Delete' });
    }
    t.allResourcesProperties('AWS::DynamoDB::Table', { DeletionProtectionEnabled: false });
  });

  it('takes deltaRetention in whole days, in any unit, or as a token in days', () => {
    const rules = (stack: Stack) =>
      Template.fromStack(stack).findResources('AWS::S3::Bucket', {
        Properties: { VersioningConfiguration: Match.anyValue() },
      });
    const { stack } = processorStack({ deltaRetention: Duration.hours(48) });
    expect(JSON.stringify(rules(stack))).toContain('"ExpirationInDays":2,"Id":"expire-deltas-g0"');
    const app = testApp();
    const tokenStack = new Stack(app, 'Token');
    new StreamProcessor(tokenStack, 'Job', {
      pipeline: 'examples/page-views.ts',
      deltaRetention: Duration.days(numberParameter(tokenStack, 'RetentionDays')),
    });
    expect(JSON.stringify(rules(tokenStack))).toContain(
      '"ExpirationInDays":{"Ref":"RetentionDays"},"Id":"expire-deltas-g0"',
    );
  });

  it("names another account's sink stream and table by ARN, refuses another region's", () => {
    // By name, the worker wrote to the stream or table of that name in its own account (where the
    // grant, on the other account's ARN, does not apply: AccessDenied at every publish).
    const sinksOf = (env: { account: string; region: string }, streamArn: string, tableArn: string) => {
      const stack = new Stack(testApp(), 'Imported', { env });
      new StreamProcessor(stack, 'Job', {
        pipeline: 'examples/card-fraud.ts',
        sinks: {
          'fraud-alerts': SinkTarget.stream(kinesis.Stream.fromStreamArn(stack, 'Alerts', streamArn)),
          cards: SinkTarget.table(dynamodb.Table.fromTableArn(stack, 'Cards', tableArn), {
            partitionKey: 'card',
          }),
        },
      });
      return JSON.stringify(functionEnv(Template.fromStack(stack), 'JobWorker').FLOE_SINKS);
    };
    const here = { account: '111111111111', region: 'us-east-1' };
    const other = sinksOf(
      here,
      'arn:aws:kinesis:us-east-1:222222222222:stream/alerts',
      'arn:aws:dynamodb:us-east-1:222222222222:table/cards',
    );
    expect(other).toContain('fraud-alerts=kinesis:arn:aws:kinesis:us-east-1:222222222222:stream/alerts');
    expect(other).toContain('cards=dynamodb:arn:aws:dynamodb:us-east-1:222222222222:table/cards?key=card');
    const same = sinksOf(
      here,
      'arn:aws:kinesis:us-east-1:111111111111:stream/alerts',
      'arn:aws:dynamodb:us-east-1:111111111111:table/cards',
    );
    expect(same).toContain('fraud-alerts=kinesis:alerts');
    expect(same).toContain('cards=dynamodb:cards?key=card');
    expect(() =>
      sinksOf(
        here,
        'arn:aws:kinesis:eu-west-1:111111111111:stream/alerts',
        'arn:aws:dynamodb:us-east-1:111111111111:table/cards',
      ),
    ).toThrow(
      /sink "fraud-alerts" is bound to a stream in region eu-west-1, but the processor runs in us-east-1/,
    );
  });

  it("binds a sink whose name has a '/' (the DSL and floe run --sink allow it)", () => {
    const stack = new Stack(testApp(), 'Slash');
    const processor = new StreamProcessor(stack, 'Job', {
      pipeline: 'examples/page-views.ts',
      sinks: {
        'counts/daily': SinkTarget.newTable({
          partitionKey: { name: 'page', type: dynamodb.AttributeType.STRING },
        }),
        'late/page-views': SinkTarget.bucket({ prefix: 'late/' }),
      },
    });
    const t = Template.fromStack(stack);
    const text = JSON.stringify(functionEnv(t, 'JobWorker').FLOE_SINKS);
    expect(text).toContain('counts/daily=dynamodb:');
    expect(text).toContain('late/page-views=s3:');
    t.resourceCountIs('AWS::DynamoDB::Table', 3); // state, control and the sink's
    expect(processor.sinkTables['counts/daily']?.node.path).toBe('Slash/Job/Sinks/counts--daily/Table');
  });

  it('binds Kinesis, existing-table and external-bucket sinks with their grants', () => {
    const app = testApp();
    const stack = new Stack(app, 'Sinks');
    const alerts = new kinesis.Stream(stack, 'Alerts', { encryption: kinesis.StreamEncryption.MANAGED });
    const table = new dynamodb.Table(stack, 'Existing', {
      partitionKey: { name: 'card', type: dynamodb.AttributeType.STRING },
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
    });
    const archive = s3.Bucket.fromBucketName(stack, 'Archive', 'archive-bucket');
    const processor = new StreamProcessor(stack, 'Job', {
      pipeline: 'examples/card-fraud.ts',
      sinks: {
        'fraud-alerts': SinkTarget.stream(alerts, { partitionKey: 'card' }),
        cards: SinkTarget.table(table, { partitionKey: 'card', valueAttribute: 'doc', ordered: false }),
        '*': SinkTarget.externalBucket(archive, { prefix: 'floe/other', merge: false }),
        'floe.dead-letter': SinkTarget.bucket({ prefix: 'bad/' }),
      },
    });
    const t = Template.fromStack(stack);
    const text = JSON.stringify(functionEnv(t, 'JobWorker').FLOE_SINKS);
    expect(text).toContain('fraud-alerts=kinesis:');
    expect(text).toContain('?partitionKey=card');
    expect(text).toContain('?key=card&value=doc&ordered=false');
    expect(text).toContain('*=s3:archive-bucket/floe/other/?merge=false');
    expect(text).toContain('floe.dead-letter=s3:');
    expect(text).toContain('/bad/');
    const statements = policyStatements(t, 'JobWorkerRole');
    // The user's dead-letter binding replaces the default one, and its grant.
    expect(text).not.toContain('dead-letters/');
    expect(JSON.stringify(statements)).not.toContain('dead-letters/');
    expect(statements).toContainEqual(
      expect.objectContaining({
        Action: 'kinesis:PutRecords',
        Resource: { 'Fn::GetAtt': [expect.stringMatching(/^Alerts/), 'Arn'] },
      }),
    );
    expect(statements).toContainEqual(
      expect.objectContaining({
        Action: ['dynamodb:BatchWriteItem', 'dynamodb:PutItem'],
        Resource: { 'Fn::GetAtt': [expect.stringMatching(/^Existing/), 'Arn'] },
      }),
    );
    expect(JSON.stringify(statements)).toContain(':s3:::archive-bucket/floe/other/*');
    // The '*' binding takes every unbound sink: nothing goes to outputs/<job>/, which is not granted.
    expect(JSON.stringify(statements)).not.toContain('outputs/');
    const unbound = Template.fromStack(processorStack().stack); // without '*', they go there
    expect(JSON.stringify(policyStatements(unbound, 'JobWorkerRole'))).toContain('outputs/page-views/*');
    expect(processor.job).toBe('card-fraud');
  });

  it("grants a customer-managed key's encrypt and decrypt for a table sink: conditional writes read the item", () => {
    const app = testApp();
    const stack = new Stack(app, 'KeySinks');
    const table = new dynamodb.Table(stack, 'Encrypted', {
      partitionKey: { name: 'card', type: dynamodb.AttributeType.STRING },
      encryption: dynamodb.TableEncryption.CUSTOMER_MANAGED,
      pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
    });
    new StreamProcessor(stack, 'Job', {
      pipeline: 'examples/card-fraud.ts',
      sinks: { 'fraud-alerts': SinkTarget.table(table, { partitionKey: 'card' }) },
    });
    const statements = policyStatements(Template.fromStack(stack), 'JobWorkerRole');
    const keyStatement = statements.find(
      (st) =>
        JSON.stringify(st.Resource).includes('EncryptedKey') && JSON.stringify(st.Action).includes('kms:'),
    );
    expect(keyStatement?.Action).toEqual(
      expect.arrayContaining(['kms:Decrypt', 'kms:Encrypt', 'kms:GenerateDataKey*']),
    );
  });

  it("sets the worker's FLOE_DELTA_APPLY from deltaApply, and only the worker's", () => {
    const { stack } = processorStack({ deltaApply: 'transactions' });
    const t = Template.fromStack(stack);
    const worker = functionEnv(t, 'JobWorker');
    expect(worker.FLOE_DELTA_APPLY).toBe('transactions');
    // What lib/aws/job.ts makes of it (references resolved to plausible names).
    const deployed = Object.fromEntries(
      Object.entries(worker).map(([k, v]) => [k, typeof v === 'string' ? v : JSON.stringify([])]),
    );
    expect(awsJobConfigFromEnv(deployed).deltaApply).toBe('transactions');
    expect(functionEnv(t, 'JobCoordinator')).not.toHaveProperty('FLOE_DELTA_APPLY');
    expect(functionEnv(t, 'JobSavepoint')).not.toHaveProperty('FLOE_DELTA_APPLY');
    // A transaction's puts are authorized as PutItem: the worker's grants do not change.
    const statements = policyStatements(t, 'JobWorkerRole');
    const stateTable = statements.filter((s) => /JobStateTable/.test(JSON.stringify(s.Resource)));
    expect(actionsOf(stateTable)).toEqual(['dynamodb:BatchGetItem', 'dynamodb:PutItem']);
    // Every mode the backend knows is accepted (lib/aws/job.ts reads the same values).
    for (const mode of DELTA_APPLY_MODES) {
      const env = functionEnv(Template.fromStack(processorStack({ deltaApply: mode }).stack), 'JobWorker');
      expect(env.FLOE_DELTA_APPLY).toBe(mode);
    }
  });

  it("covers the operator CLI's savepoint and replay calls with the grants docs/operations.md lists", () => {
    const { stack, processor } = processorStack();
    const role = new iam.Role(stack, 'Operator', { assumedBy: new iam.AccountRootPrincipal() });
    // The snippet of docs/operations.md ("Savepoints and replay in AWS", With the CLI).
    processor.stateTable.grantReadWriteData(role);
    processor.controlTable.grantReadWriteData(role);
    processor.stream.grantRead(role);
    processor.bucket.grantReadWrite(role, 'savepoints/*');
    processor.bucket.grantRead(role, `${processor.job}/*`);
    processor.bucket.grantPut(role, `${processor.job}/*`);
    const statements = policyStatements(Template.fromStack(stack), 'Operator');
    const matches = (pattern: string, action: string): boolean =>
      new RegExp(`^${pattern.replace(/\*/g, '.*')}$`).test(action);
    const allows = (action: string, resource: RegExp): boolean =>
      statements.some(
        (s) =>
          actionsOf([s]).some((a) => matches(a, action)) &&
          [s.Resource].flat().some((r) => resource.test(JSON.stringify(r))),
      );
    // The calls floe savepoint create/list/delete and floe replay --restore-only make
    // (lib/runtime/savepoints.ts over lib/aws/savepoints.ts; a lease redoes a pending delta).
    const calls: Array<[string, RegExp]> = [
      ['dynamodb:GetItem', /JobControlTable/],
      ['dynamodb:PutItem', /JobControlTable/],
      ['dynamodb:UpdateItem', /JobControlTable/],
      ['dynamodb:Query', /JobControlTable/],
      ['dynamodb:ConditionCheckItem', /JobControlTable/],
      ['dynamodb:Scan', /JobStateTable/],
      ['dynamodb:BatchGetItem', /JobStateTable/],
      ['dynamodb:PutItem', /JobStateTable/],
      ['dynamodb:BatchWriteItem', /JobStateTable/],
      ['kinesis:ListShards', /JobStream/],
      ['kinesis:GetShardIterator', /JobStream/],
      ['kinesis:GetRecords', /JobStream/],
      ['s3:ListBucket', /JobBucket[^"]*","Arn"\]\}$/],
      ['s3:GetObject', /"\/savepoints\/\*"/],
      ['s3:PutObject', /"\/savepoints\/\*"/],
      ['s3:DeleteObject', /"\/savepoints\/\*"/],
      ['s3:GetObject', /"\/page-views\/\*"/],
      ['s3:PutObject', /"\/page-views\/\*"/],
    ];
    expect(calls.filter(([action, resource]) => !allows(action, resource))).toEqual([]);
  });

  it('grants lambda:InvokeFunction on the savepoint function with grantTakeSavepoint', () => {
    const { stack, processor } = processorStack();
    const operator = new iam.Role(stack, 'Operator', { assumedBy: new iam.AccountRootPrincipal() });
    const grant = processor.grantTakeSavepoint(operator);
    expect(grant.success).toBe(true);
    const statements = policyStatements(Template.fromStack(stack), 'Operator');
    expect(statements).toEqual([
      expect.objectContaining({
        Effect: 'Allow',
        Action: 'lambda:InvokeFunction',
        // The unqualified function only (no `:*` for versions and aliases).
        Resource: { 'Fn::GetAtt': [expect.stringMatching(/^JobSavepoint/), 'Arn'] },
      }),
    ]);
    expect(() => processor.grantTakeSavepoint(new iam.ServicePrincipal('states.amazonaws.com'))).toThrow(
      /grantTakeSavepoint needs an IAM identity that can hold a policy/,
    );
  });

  it('grants producers PutRecord(s) on the stream', () => {
    const { stack, processor } = processorStack();
    const producer = new iam.Role(stack, 'Producer', { assumedBy: new iam.AccountRootPrincipal() });
    processor.grantProduce(producer);
    const statements = policyStatements(Template.fromStack(stack), 'Producer');
    expect(actionsOf(statements)).toEqual(
      expect.arrayContaining(['kinesis:PutRecord', 'kinesis:PutRecords', 'kinesis:ListShards']),
    );
  });

  it('is recognised by isStreamProcessor', () => {
    const { stack, processor } = processorStack();
    expect(StreamProcessor.isStreamProcessor(processor)).toBe(true);
    expect(StreamProcessor.isStreamProcessor(stack)).toBe(false);
  });
});

describe('StreamProcessor rejects invalid props in the constructor', () => {
  const existing = (stack: Stack) =>
    kinesis.Stream.fromStreamArn(stack, 'S', 'arn:aws:kinesis:us-east-1:1:stream/s');
  const cases: Array<[string, (stack: Stack) => Partial<StreamProcessorProps>, RegExp]> = [
    ['a missing pipeline', () => ({ pipeline: '' }), /pipeline must be the path of a pipeline module/],
    [
      'a pipeline that does not exist',
      () => ({ pipeline: 'examples/nope.ts' }),
      /does not exist \(resolved to /,
    ],
    [
      'a pipeline outside the repository',
      () => ({ pipeline: '/etc/hosts.ts' }),
      /must be inside the floe repository/,
    ],
    [
      'a pipeline that is not a module',
      () => ({ pipeline: 'README.md' }),
      /must be a \.ts, \.mts, \.js or \.mjs module/,
    ],
    ['a job with a slash', () => ({ job: 'a/b' }), /job must be 1-64 characters.*got "a\/b"/],
    ['a reserved job name', () => ({ job: 'outputs' }), /not one of outputs, dead-letters, savepoints/],
    [
      'shardCount with an existing stream',
      (s) => ({ stream: existing(s), shardCount: 2 }),
      /shardCount configures the stream the construct defines/,
    ],
    [
      'streamRetention with an existing stream',
      (s) => ({ stream: existing(s), streamRetention: Duration.days(2) }),
      /streamRetention configures/,
    ],
    ['zero shards', () => ({ shardCount: 0 }), /shardCount must be a whole number from 1 to 10000, got 0/],
    ['fractional shards', () => ({ shardCount: 1.5 }), /shardCount must be a whole number/],
    [
      'a short retention',
      () => ({ streamRetention: Duration.hours(12) }),
      /streamRetention must be between 24 hours and 365 days/,
    ],
    ['a negative generation', () => ({ generation: -1 }), /generation must be a whole number from 0/],
    [
      'a generation from a token (it names lifecycle rule prefixes)',
      (s) => ({ generation: numberParameter(s, 'Generation') }),
      /generation must be a literal number known at synthesis, got an unresolved token .*S3 prefix cannot be computed at deploy time/,
    ],
    [
      'a delta retention of 0 days (S3 refuses ExpirationInDays 0)',
      () => ({ deltaRetention: Duration.days(0) }),
      /deltaRetention must be a whole number of days, at least 1 .* got Duration\.days\(0\)/,
    ],
    [
      'a delta retention of part of a day',
      () => ({ deltaRetention: Duration.hours(36) }),
      /deltaRetention must be a whole number of days, at least 1 .* got Duration\.hours\(36\); e\.g\. Duration\.days\(2\)/,
    ],
    [
      'a delta retention token not in days',
      (s) => ({ deltaRetention: Duration.hours(numberParameter(s, 'Retention')) }),
      /deltaRetention from a token must be given as Duration\.days\(\.\.\.\) .* got Duration\.hours\(<token>\)/,
    ],
    [
      'the SNAPSHOT removal policy (no resource of the construct can be snapshotted)',
      () => ({ removalPolicy: RemovalPolicy.SNAPSHOT }),
      /removalPolicy SNAPSHOT is not supported: .* use RETAIN or DESTROY/,
    ],
    [
      'an AWS/ namespace',
      () => ({ metricsNamespace: 'AWS/Floe' }),
      /metricsNamespace must .* not start with ':' or 'AWS\/'/,
    ],
    [
      'a namespace starting with a colon (CloudFormation refuses it)',
      () => ({ metricsNamespace: ':x' }),
      /metricsNamespace must .* got ":x"/,
    ],
    ['a blank namespace', () => ({ metricsNamespace: '  ' }), /metricsNamespace must .* not blank/],
    [
      'a job from a token (it names prefixes and alarms)',
      (s) => ({ job: new CfnParameter(s, 'JobId').valueAsString }),
      /job must be a literal string known at synthesis, got an unresolved token/,
    ],
    [
      'a too short worker timeout',
      () => ({ workerTimeout: Duration.seconds(10) }),
      /workerTimeout must be between 30 seconds and 15 minutes/,
    ],
    [
      'a too long worker timeout',
      () => ({ workerTimeout: Duration.minutes(16) }),
      /workerTimeout must be between/,
    ],
    [
      'a commit interval over a minute',
      () => ({ commitInterval: Duration.minutes(2) }),
      /commitInterval must be whole milliseconds from 0 to 60 seconds/,
    ],
    [
      'a read interval below a shard quota',
      () => ({ readInterval: Duration.millis(100) }),
      /readInterval must be whole milliseconds from 200 ms \(a shard serves 5 reads a second\) to 10 seconds, got Duration.millis\(100\); with n consumers of the stream use n × 200 ms/,
    ],
    [
      'too little worker memory',
      () => ({ workerMemorySize: 64 }),
      /workerMemorySize must be a whole number from 128 to 10240, got 64/,
    ],
    [
      'a state cache of no keys',
      () => ({ maxCachedKeys: 0 }),
      /maxCachedKeys must be a whole number from 1 to 10000000, got 0/,
    ],
    [
      'a zero dead-letter threshold',
      () => ({ deadLetterAlarmThreshold: 0 }),
      /deadLetterAlarmThreshold must be a whole number from 1/,
    ],
    [
      'a zero lag threshold',
      () => ({ lagAlarmThreshold: Duration.seconds(0) }),
      /lagAlarmThreshold must be a positive duration/,
    ],
    [
      'a lag threshold token not in milliseconds',
      (s) => ({ lagAlarmThreshold: Duration.minutes(numberParameter(s, 'Lag')) }),
      /lagAlarmThreshold from a token must be given as Duration\.millis\(\.\.\.\) .* got Duration\.minutes\(<token>\)/,
    ],
    [
      'an unknown deltaApply',
      () => ({ deltaApply: 'transaction' as StreamProcessorProps['deltaApply'] }),
      /deltaApply must be 'items' .* or 'transactions' .*, got "transaction"/,
    ],
    [
      'a sink name with =',
      () => ({ sinks: { 'a=b': SinkTarget.bucket() } }),
      /sink names must be non-empty, without surrounding spaces or '=', got "a=b"/,
    ],
    [
      "two sink names that meet in one construct id ('/' is written '--')",
      () => ({ sinks: { 'a--b': SinkTarget.bucket(), 'a/b': SinkTarget.bucket({ prefix: 'ab/' }) } }),
      /sinks "a--b" and "a\/b" would share the construct id "a--b" \(CDK writes '\/' and line breaks in an id as '--'\); rename one/,
    ],
    [
      'two sink names that meet in one construct id (a line break is written --)',
      () => ({ sinks: { 'a\nb': SinkTarget.bucket(), 'a--b': SinkTarget.bucket({ prefix: 'ab/' }) } }),
      /sinks "a\\nb" and "a--b" would share the construct id "a--b" \(CDK writes '\/' and line breaks in an id as '--'\); rename one/,
    ],
    [
      "a bucket sink over the bucket's whole key space (the worker could overwrite savepoints)",
      () => ({ sinks: { 'page-view-counts': SinkTarget.bucket({ prefix: '' }) } }),
      /sink "page-view-counts": the prefix "" in the processor's bucket overlaps every key, where floe keeps its own objects \("page-views\/", "savepoints\/", "dead-letters\/page-views\/"\); choose another prefix, e\.g\. "outputs\/page-views\/page-view-counts\/"/,
    ],
    [
      'a bucket sink under savepoints/',
      () => ({ sinks: { 'page-view-counts': SinkTarget.bucket({ prefix: 'savepoints/mine' }) } }),
      /the prefix "savepoints\/mine\/" in the processor's bucket overlaps "savepoints\/"/,
    ],
    [
      "a bucket sink over the job's state deltas",
      () => ({ sinks: { 'page-view-counts': SinkTarget.bucket({ prefix: 'page-views/out' }) } }),
      /overlaps "page-views\/"/,
    ],
    [
      "a bucket sink over the default dead letters (only floe.dead-letter's own binding may)",
      () => ({ sinks: { 'page-view-counts': SinkTarget.bucket({ prefix: 'dead-letters' }) } }),
      /the prefix "dead-letters\/" in the processor's bucket overlaps "dead-letters\/page-views\/"/,
    ],
    [
      'a commit interval token not in milliseconds',
      (s) => ({ commitInterval: Duration.seconds(numberParameter(s, 'Interval')) }),
      /commitInterval from a token must be given as Duration\.millis\(\.\.\.\) \(the worker is given milliseconds\), got Duration\.seconds\(<token>\)/,
    ],
    [
      'a worker timeout token not in seconds',
      (s) => ({ workerTimeout: Duration.minutes(numberParameter(s, 'Timeout')) }),
      /workerTimeout from a token must be given as Duration\.seconds\(\.\.\.\)/,
    ],
    [
      'a worker timeout of part of a second (a Lambda timeout is whole seconds)',
      () => ({ workerTimeout: Duration.millis(30_500) }),
      /workerTimeout must be a whole number of seconds \(a Lambda timeout is whole seconds\), got Duration\.millis\(30500\)/,
    ],
    [
      'a stream retention of part of an hour',
      () => ({ streamRetention: Duration.minutes(1470) }),
      /streamRetention must be a whole number of hours \(a Kinesis retention period is whole hours\), got Duration\.minutes\(1470\)/,
    ],
    [
      'a sink that is not a SinkTarget',
      () => ({ sinks: { counts: 'dynamodb:T' as unknown as SinkTarget } }),
      /sink "counts" must be bound with SinkTarget\.newTable/,
    ],
  ];
  for (const [what, props, message] of cases) {
    it(`rejects ${what}`, () => {
      const app = testApp();
      const stack = new Stack(app, 'Bad');
      expect(
        () => new StreamProcessor(stack, 'Job', { pipeline: 'examples/page-views.ts', ...props(stack) }),
      ).toThrow(message);
    });
  }

  it('rejects invalid sink target options when they are built', () => {
    expect(() =>
      SinkTarget.newTable({ partitionKey: { name: 'a b', type: dynamodb.AttributeType.STRING } }),
    ).toThrow(/partitionKey\.name must be a field name .* got "a b"/);
    expect(() =>
      SinkTarget.newTable({
        partitionKey: { name: 'k', type: dynamodb.AttributeType.STRING },
        sortKey: { name: 'k', type: dynamodb.AttributeType.NUMBER },
      }),
    ).toThrow(/must differ, both are "k"/);
    expect(() => SinkTarget.bucket({ prefix: '/abs' })).toThrow(/must not start with '\/'/);
    const stack = new Stack(testApp(), 'S');
    const stream = kinesis.Stream.fromStreamArn(stack, 'S', 'arn:aws:kinesis:us-east-1:1:stream/s');
    expect(() => SinkTarget.stream(stream, { partitionKey: 'a,b' })).toThrow(
      /partitionKey must be a field name/,
    );
  });
});

/** Every Validations.of(...).acknowledge(...) recorded in the tree. */
function acknowledgments(root: IConstruct): Array<{ path: string; id: string; reason: string }> {
  const found: Array<{ path: string; id: string; reason: string }> = [];
  for (const c of root.node.findAll()) {
    for (const entry of c.node.metadata) {
      if (entry.type !== Validations.ACKNOWLEDGED_RULES_METADATA_KEY) continue;
      // { 'Annotation::<rule id>': reason } (cdk-nag strips the prefix when it matches).
      for (const [key, reason] of Object.entries(entry.data as Record<string, string>)) {
        found.push({ path: c.node.path, id: key.replace(/^annotation::/i, ''), reason: String(reason) });
      }
    }
  }
  return found;
}

describe('cdk-nag AwsSolutions', () => {
  it('finds nothing unacknowledged in the example app, and every acknowledgment says why', () => {
    const outdir = tmpOutdir();
    const app = testApp({ outdir });
    const stack = new PageViewsStack(app, 'FloePageViews');
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app, { verbose: true }));
    expect(() => app.synth()).not.toThrow();
    const report = JSON.parse(readFileSync(join(outdir, 'validation-report.json'), 'utf8')) as {
      pluginReports: Array<{ violations?: unknown[] }>;
    };
    for (const plugin of report.pluginReports) expect(plugin.violations ?? []).toEqual([]);

    const acks = acknowledgments(stack);
    // Exactly these rules are acknowledged, each with a reason of substance.
    expect([...new Set(acks.map((a) => a.id.replace(/\[.*$/, '')))].sort()).toEqual([
      'AwsSolutions-IAM5',
      'AwsSolutions-L1',
      'AwsSolutions-S1',
    ]);
    for (const a of acks) expect(a.reason.length, `${a.path} ${a.id}`).toBeGreaterThan(60);
    // IAM5 is acknowledged only for object keys under a prefix, never for a bare "*".
    for (const a of acks.filter((x) => x.id.startsWith('AwsSolutions-IAM5'))) {
      expect(a.id).toMatch(/^AwsSolutions-IAM5\[Resource::<[A-Za-z0-9]+\.Arn>\/[a-z0-9./-]+\/\*\]$/);
    }
    // S1 only on the access log bucket (it cannot log into itself).
    expect(acks.filter((a) => a.id === 'AwsSolutions-S1').map((a) => a.path)).toEqual([
      'FloePageViews/PageViews/AccessLogsBucket',
    ]);
  });

  it('reports a violation when there is one (the pack really runs)', () => {
    const app = testApp({ outdir: tmpOutdir() });
    const stack = new PageViewsStack(app, 'WithInsecureBucket');
    new s3.Bucket(stack, 'Insecure');
    Validations.of(app).addPlugins(new AwsSolutionsChecks(app));
    expect(() => app.synth()).toThrow(/AwsSolutions-S1[\s\S]*AwsSolutions-S10/);
  });
});

describe('StreamProcessor in an app without cdk.json (no feature flags)', () => {
  /** A plain `new App()`: no context at all, so every feature flag has its default. */
  function plainStack(
    props: Partial<StreamProcessorProps> = {},
    extra?: (stack: Stack) => Partial<StreamProcessorProps>,
  ) {
    const app = new App({ outdir: tmpOutdir() });
    const stack = new Stack(app, 'Plain');
    const processor = new StreamProcessor(stack, 'Job', {
      pipeline: 'examples/page-views.ts',
      ...props,
      ...extra?.(stack),
    });
    return { app, stack, processor, template: Template.fromStack(stack) };
  }

  const logDelivery = (bucketId: string, sourceId: string, prefix = 'processor-bucket/') => ({
    Effect: 'Allow',
    Principal: { Service: 'logging.s3.amazonaws.com' },
    Action: 's3:PutObject',
    Resource: { 'Fn::Join': ['', [{ 'Fn::GetAtt': [bucketId, 'Arn'] }, `/${prefix}*`]] },
    Condition: {
      ArnLike: { 'aws:SourceArn': { 'Fn::GetAtt': [sourceId, 'Arn'] } },
      StringEquals: { 'aws:SourceAccount': { Ref: 'AWS::AccountId' } },
    },
  });

  it('synthesizes: access logs are delivered by bucket policy, with no ACL', { timeout: 120_000 }, () => {
    expect(
      new App({ outdir: tmpOutdir() }).node.tryGetContext('@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy'),
    ).toBeUndefined();
    const { stack, processor, template } = plainStack();
    const bucketId = stack.getLogicalId(processor.bucket.node.defaultChild as s3.CfnBucket);
    const logsId = Object.keys(template.findResources('AWS::S3::Bucket')).find((id) =>
      id.startsWith('JobAccessLogsBucket'),
    )!;
    template.hasResourceProperties('AWS::S3::Bucket', {
      LoggingConfiguration: { DestinationBucketName: { Ref: logsId }, LogFilePrefix: 'processor-bucket/' },
      OwnershipControls: { Rules: [{ ObjectOwnership: 'BucketOwnerEnforced' }] },
    });
    // Both buckets keep ACLs disabled: no canned ACL (LogDeliveryWrite) anywhere.
    for (const bucket of Object.values(template.findResources('AWS::S3::Bucket'))) {
      expect((bucket as { Properties: Json }).Properties.AccessControl).toBeUndefined();
      expect((bucket as { Properties: Json }).Properties.OwnershipControls).toEqual({
        Rules: [{ ObjectOwnership: 'BucketOwnerEnforced' }],
      });
    }
    template.hasResourceProperties('AWS::S3::BucketPolicy', {
      Bucket: { Ref: logsId },
      PolicyDocument: { Statement: Match.arrayWith([logDelivery(logsId, bucketId)]) },
    });
    Annotations.fromStack(stack).hasNoWarning('*', Match.anyValue());
  });

  it('also with the flag explicitly off, and grants log delivery on a given access log bucket', {
    timeout: 120_000,
  }, () => {
    const app = new App({
      outdir: tmpOutdir(),
      context: { '@aws-cdk/aws-s3:serverAccessLogsUseBucketPolicy': false, 'aws:cdk:bundling-stacks': [] },
    });
    const stack = new Stack(app, 'FlagOff');
    const logs = new s3.Bucket(stack, 'MyLogs', { enforceSSL: true });
    const processor = new StreamProcessor(stack, 'Job', {
      pipeline: 'examples/page-views.ts',
      serverAccessLogsBucket: logs,
    });
    const template = Template.fromStack(stack);
    const logsId = stack.getLogicalId(logs.node.defaultChild as s3.CfnBucket);
    const bucketId = stack.getLogicalId(processor.bucket.node.defaultChild as s3.CfnBucket);
    template.resourceCountIs('AWS::S3::Bucket', 2); // no bucket of its own for the logs
    template.hasResourceProperties('AWS::S3::Bucket', {
      LoggingConfiguration: { DestinationBucketName: { Ref: logsId }, LogFilePrefix: 'processor-bucket/' },
    });
    template.hasResourceProperties('AWS::S3::BucketPolicy', {
      Bucket: { Ref: logsId },
      PolicyDocument: { Statement: Match.arrayWith([logDelivery(logsId, bucketId)]) },
    });
    const logsBucket = template.findResources('AWS::S3::Bucket')[logsId] as { Properties?: Json };
    expect(logsBucket.Properties?.AccessControl).toBeUndefined();
  });

  it('warns when the given access log bucket is imported (its policy cannot be changed)', {
    timeout: 120_000,
  }, () => {
    const { stack, template } = plainStack({}, (s) => ({
      serverAccessLogsBucket: s3.Bucket.fromBucketName(s, 'Imported', 'my-access-logs'),
    }));
    template.hasResourceProperties('AWS::S3::Bucket', {
      LoggingConfiguration: { DestinationBucketName: 'my-access-logs', LogFilePrefix: 'processor-bucket/' },
    });
    Annotations.fromStack(stack).hasWarning(
      '/Plain/Job',
      Match.stringLikeRegexp(
        'allow the service principal logging.s3.amazonaws.com to s3:PutObject on processor-bucket/\\*',
      ),
    );
  });
});

describe('bundling (local esbuild, no Docker)', () => {
  it('bundles the pipeline into the three functions as ES modules that load', {
    timeout: 120_000,
  }, async () => {
    const outdir = tmpOutdir();
    const app = testApp({ outdir, bundle: true, context: { 'aws:cdk:enable-asset-metadata': true } });
    const stack = new PageViewsStack(app, 'Bundled');
    const assembly = app.synth();
    const template = assembly.getStackArtifact(stack.artifactId).template as {
      Resources: Record<string, { Type: string; Metadata?: Record<string, string> }>;
    };
    const assetDirs = Object.values(template.Resources)
      .filter((r) => r.Type === 'AWS::Lambda::Function')
      .map((r) => join(outdir, r.Metadata?.['aws:asset:path'] ?? 'missing'));
    expect(assetDirs).toHaveLength(3);
    for (const dir of assetDirs) {
      const file = join(dir, 'index.mjs');
      expect(existsSync(file)).toBe(true);
      const code = readFileSync(file, 'utf8');
      expect(code).toContain('page-view-counts'); // the pipeline is in the bundle
      expect(code).not.toContain('FLOE_PIPELINE_MODULE');
      expect(code).not.toContain('better-sqlite3');
      const module = (await import(pathToFileURL(file).href)) as { handler?: unknown };
      expect(typeof module.handler).toBe('function');
    }
  });
});
