/**
 * The example stack: examples/page-views.ts as a StreamProcessor, its window counts upserted
 * into a DynamoDB table (page, windowStart), late views as NDJSON in the bucket. What
 * `npx cdk deploy` deploys (cdk/app.ts) and what the emulator deploy test deploys.
 */
import { CfnOutput, type RemovalPolicy, Stack, type StackProps } from 'aws-cdk-lib';
import { AttributeType } from 'aws-cdk-lib/aws-dynamodb';
import * as kinesis from 'aws-cdk-lib/aws-kinesis';
import type { Construct } from 'constructs';
import { SinkTarget } from './sink-target.ts';
import { StreamProcessor } from './stream-processor.ts';

export interface PageViewsStackProps extends StackProps {
  /**
   * Name of an existing Kinesis stream (in the stack's account and region) to read.
   * @default - the stack defines a stream with 2 shards
   */
  readonly existingStreamName?: string;
  /**
   * Removal policy of the stream, tables, buckets and log groups.
   * @default RemovalPolicy.RETAIN
   */
  readonly removalPolicy?: RemovalPolicy;
}

export class PageViewsStack extends Stack {
  readonly processor: StreamProcessor;

  constructor(scope: Construct, id: string, props: PageViewsStackProps = {}) {
    super(scope, id, {
      description: 'floe example: page views per page in 1-minute event-time windows',
      ...props,
    });
    const existing =
      props.existingStreamName === undefined
        ? undefined
        : kinesis.Stream.fromStreamArn(
            this,
            'ExistingStream',
            this.formatArn({
              service: 'kinesis',
              resource: 'stream',
              resourceName: props.existingStreamName,
            }),
          );
    this.processor = new StreamProcessor(this, 'PageViews', {
      pipeline: 'examples/page-views.ts',
      ...(existing !== undefined ? { stream: existing } : { shardCount: 2 }),
      sinks: {
        'page-view-counts': SinkTarget.newTable({
          partitionKey: { name: 'page', type: AttributeType.STRING },
          sortKey: { name: 'windowStart', type: AttributeType.NUMBER },
        }),
        'late-page-views': SinkTarget.bucket({ prefix: 'late/page-views/' }),
      },
      ...(props.removalPolicy !== undefined ? { removalPolicy: props.removalPolicy } : {}),
    });
    const p = this.processor;
    const out = (name: string, value: string, description: string): void => {
      new CfnOutput(this, name, { value, description });
    };
    out('Job', p.job, 'floe job id');
    out('StreamName', p.stream.streamName, 'source stream (partition key: page)');
    out('StateTableName', p.stateTable.tableName, 'keyed state');
    out('ControlTableName', p.controlTable.tableName, 'leases, checkpoints, outbox');
    out('BucketName', p.bucket.bucketName, 'deltas, checkpoints, savepoints, dead letters, S3 outputs');
    out('WorkerFunctionName', p.worker.functionName, 'worker function');
    out('CoordinatorFunctionName', p.coordinator.functionName, 'coordinator function');
    out('SavepointFunctionName', p.savepointFunction.functionName, 'takes a savepoint when invoked');
    out('PageViewCountsTableName', p.sinkTables['page-view-counts']!.tableName, 'sink page-view-counts');
    out('DashboardName', p.dashboard.dashboardName, 'CloudWatch dashboard');
  }
}
