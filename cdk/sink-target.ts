/**
 * Where a pipeline's named sink goes when the StreamProcessor construct deploys it: a DynamoDB
 * table (upsert by key; a new one defined by the construct or an existing one), an existing
 * Kinesis stream, or S3 (the processor's bucket or another). Rendered into FLOE_SINKS with the
 * grammar of lib/aws/sinks-config.ts, and granted to the worker with the actions the sink uses.
 */
import {
  Arn,
  ArnFormat,
  type IResource,
  type RemovalPolicy,
  Stack,
  Token,
  TokenComparison,
  Validations,
} from 'aws-cdk-lib';
import * as dynamodb from 'aws-cdk-lib/aws-dynamodb';
import type { IGrantable } from 'aws-cdk-lib/aws-iam';
import * as iam from 'aws-cdk-lib/aws-iam';
import type * as kinesis from 'aws-cdk-lib/aws-kinesis';
import type * as s3 from 'aws-cdk-lib/aws-s3';
import { Construct } from 'constructs';

/** The sink that receives records that could not be processed (lib/core DEAD_LETTER_SINK). */
export const DEAD_LETTER_SINK = 'floe.dead-letter';

/** What a sink target needs from the processor it is bound to. */
export interface SinkTargetBindOptions {
  /** Scope for resources the target defines (one per sink). */
  readonly scope: Construct;
  /** The DSL sink name. */
  readonly sinkName: string;
  /** The job id. */
  readonly job: string;
  /** The processor's bucket. */
  readonly bucket: s3.IBucket;
  /** Removal policy and point-in-time recovery of tables the target defines. */
  readonly removalPolicy: RemovalPolicy;
}

/** The result of binding a sink target. */
export interface SinkTargetConfig {
  /** `TYPE:DESTINATION[?PARAMS]` (lib/aws/sinks-config.ts); may contain tokens. */
  readonly destination: string;
  /** Grants the worker what the sink needs. */
  readonly grant: (grantee: IGrantable) => void;
  /** A table the target defined, if any. */
  readonly table?: dynamodb.Table;
}

/** Options of a DynamoDB table sink defined by the construct. */
export interface NewTableSinkOptions {
  /** The table's partition key; the attribute is taken from the field of the same name of each value. */
  readonly partitionKey: dynamodb.Attribute;
  /**
   * The table's sort key, taken from the field of the same name of each value.
   * @default - no sort key: one item per partition key
   */
  readonly sortKey?: dynamodb.Attribute;
  /**
   * Store the whole value as JSON in this attribute instead of one attribute per top-level field.
   * @default - each top-level field of the value becomes an attribute
   */
  readonly valueAttribute?: string;
  /**
   * Keep each shard's output order: every item is a PutItem conditional on not holding a later
   * output of the same job and shard, so a worker that stalls past its lease cannot replace a
   * newer result. false: BatchWriteItem of 25 items, last writer wins (fewer requests, the same
   * write units).
   * @default true
   */
  readonly ordered?: boolean;
}

/** Options of a sink into an existing DynamoDB table. */
export interface TableSinkOptions {
  /** Name of the table's partition key attribute, taken from the field of the same name of each value. */
  readonly partitionKey: string;
  /**
   * Name of the table's sort key attribute, if the table has one.
   * @default - the table has no sort key
   */
  readonly sortKey?: string;
  /**
   * Store the whole value as JSON in this attribute.
   * @default - each top-level field of the value becomes an attribute
   */
  readonly valueAttribute?: string;
  /**
   * Keep each shard's output order: every item is a PutItem conditional on not holding a later
   * output of the same job and shard, so a worker that stalls past its lease cannot replace a
   * newer result. false: BatchWriteItem of 25 items, last writer wins (fewer requests, the same
   * write units).
   * @default true
   */
  readonly ordered?: boolean;
}

/** Options of a sink into a Kinesis stream. */
export interface StreamSinkOptions {
  /**
   * Top-level field of each value used as the partition key (a string or number).
   * @default - the output id (`job/shard/commit/index`), which spreads records over shards
   */
  readonly partitionKey?: string;
}

/** Options of a sink into S3 objects (one NDJSON object per sink, job, shard and commit). */
export interface BucketSinkOptions {
  /**
   * Key prefix of the objects.
   * @default 'outputs/<job>/'
   */
  readonly prefix?: string;
  /**
   * Merge lines with an existing object of the same key (a GET before each PUT) so a partial
   * republish after a crash loses nothing.
   * @default true
   */
  readonly merge?: boolean;
}

const FIELD = /^[^\s,&?=]{1,255}$/;

function checkField(what: string, value: string): void {
  if (typeof value !== 'string' || !FIELD.test(value)) {
    throw new Error(
      `${what} must be a field name of 1-255 characters without spaces , & ? =, got ${JSON.stringify(value)}`,
    );
  }
}

/**
 * A sink in the processor's own bucket stays out of the prefixes floe keeps there (state deltas
 * and large checkpoints under `<job>/`, `savepoints/`, the default dead letters): the worker is
 * granted writes under the sink's prefix, which would reach them.
 */
function checkOwnBucketPrefix(prefix: string, o: SinkTargetBindOptions): void {
  const reserved = [
    `${o.job}/`,
    'savepoints/',
    ...(o.sinkName === DEAD_LETTER_SINK ? [] : [`dead-letters/${o.job}/`]),
  ];
  const clash =
    prefix === '' ? 'every key' : reserved.find((r) => r.startsWith(prefix) || prefix.startsWith(r));
  if (clash !== undefined) {
    throw new Error(
      `sink "${o.sinkName}": the prefix ${JSON.stringify(prefix)} in the processor's bucket overlaps ${clash === 'every key' ? clash : JSON.stringify(clash)}, where floe keeps its own objects (${reserved.map((r) => JSON.stringify(r)).join(', ')}); choose another prefix, e.g. "outputs/${o.job}/${o.sinkName}/"`,
    );
  }
}

function checkPrefix(prefix: string): string {
  if (typeof prefix !== 'string' || prefix.startsWith('/') || /[?&=\s]/.test(prefix)) {
    throw new Error(
      `an S3 sink prefix must not start with '/' nor contain spaces ? & =, got ${JSON.stringify(prefix)}`,
    );
  }
  return prefix === '' || prefix.endsWith('/') ? prefix : `${prefix}/`;
}

function objectStatements(bucket: s3.IBucket, prefix: string, grantee: IGrantable, merge: boolean): void {
  if (merge) {
    grantObjects(bucket, [prefix], grantee);
  } else {
    allowObjects(grantee, bucket, [prefix], ['s3:PutObject']);
  }
  bucket.encryptionKey?.grantEncryptDecrypt(grantee);
}

/**
 * The destination of one sink of a StreamProcessor: use the static factory methods.
 *
 * @example
 * sinks: {
 *   'page-view-counts': SinkTarget.newTable({
 *     partitionKey: { name: 'page', type: AttributeType.STRING },
 *     sortKey: { name: 'windowStart', type: AttributeType.NUMBER },
 *   }),
 *   alerts: SinkTarget.stream(alertsStream, { partitionKey: 'user' }),
 * }
 */
export abstract class SinkTarget {
  /** A DynamoDB table defined by the construct (on-demand, point-in-time recovery), upserted by key. */
  static newTable(options: NewTableSinkOptions): SinkTarget {
    checkField('partitionKey.name', options.partitionKey?.name);
    if (options.sortKey !== undefined) checkField('sortKey.name', options.sortKey.name);
    if (options.valueAttribute !== undefined) checkField('valueAttribute', options.valueAttribute);
    if (options.sortKey !== undefined && options.sortKey.name === options.partitionKey.name) {
      throw new Error(
        `the sort key and the partition key of a table sink must differ, both are ${JSON.stringify(options.sortKey.name)}`,
      );
    }
    return new (class extends SinkTarget {
      bind(o: SinkTargetBindOptions): SinkTargetConfig {
        const table = new dynamodb.Table(o.scope, 'Table', {
          partitionKey: options.partitionKey,
          ...(options.sortKey !== undefined ? { sortKey: options.sortKey } : {}),
          billingMode: dynamodb.BillingMode.PAY_PER_REQUEST,
          pointInTimeRecoverySpecification: { pointInTimeRecoveryEnabled: true },
          encryption: dynamodb.TableEncryption.AWS_MANAGED,
          removalPolicy: o.removalPolicy,
        });
        const key = [options.partitionKey.name, ...(options.sortKey ? [options.sortKey.name] : [])];
        return {
          destination: tableDestination(table.tableName, key, options),
          grant: (grantee) => grantUpsert(table, grantee),
          table,
        };
      }
    })();
  }

  /** An existing DynamoDB table (of the processor's region; of another account, named by ARN), upserted by key. */
  static table(table: dynamodb.ITable, options: TableSinkOptions): SinkTarget {
    checkField('partitionKey', options.partitionKey);
    if (options.sortKey !== undefined) checkField('sortKey', options.sortKey);
    if (options.valueAttribute !== undefined) checkField('valueAttribute', options.valueAttribute);
    if (options.sortKey !== undefined && options.sortKey === options.partitionKey) {
      throw new Error(
        `the sort key and the partition key of a table sink must differ, both are ${JSON.stringify(options.sortKey)}`,
      );
    }
    return new (class extends SinkTarget {
      bind(o: SinkTargetBindOptions): SinkTargetConfig {
        const key = [options.partitionKey, ...(options.sortKey !== undefined ? [options.sortKey] : [])];
        const ref = sinkReference(o, table, table.tableName, table.tableArn, 'table');
        return {
          destination: tableDestination(ref, key, options),
          grant: (grantee) => grantUpsert(table, grantee),
        };
      }
    })();
  }

  /** An existing Kinesis stream (PutRecords) of the processor's region; of another account, named by ARN. */
  static stream(stream: kinesis.IStream, options: StreamSinkOptions = {}): SinkTarget {
    if (options.partitionKey !== undefined) checkField('partitionKey', options.partitionKey);
    return new (class extends SinkTarget {
      bind(o: SinkTargetBindOptions): SinkTargetConfig {
        const params = options.partitionKey !== undefined ? `?partitionKey=${options.partitionKey}` : '';
        const ref = sinkReference(o, stream, stream.streamName, stream.streamArn, 'stream');
        return {
          destination: `kinesis:${ref}${params}`,
          grant: (grantee) => {
            stream.grant(grantee, 'kinesis:PutRecords'); // the sink's only call (KinesisStreamSink)
            stream.encryptionKey?.grantEncrypt(grantee);
          },
        };
      }
    })();
  }

  /** NDJSON objects in the processor's own bucket. */
  static bucket(options: BucketSinkOptions = {}): SinkTarget {
    const prefix = options.prefix === undefined ? undefined : checkPrefix(options.prefix);
    return new (class extends SinkTarget {
      bind(o: SinkTargetBindOptions): SinkTargetConfig {
        const p = prefix ?? `outputs/${o.job}/`;
        checkOwnBucketPrefix(p, o);
        return bucketConfig(o.bucket, p, options.merge);
      }
    })();
  }

  /** NDJSON objects in another bucket. */
  static externalBucket(bucket: s3.IBucket, options: BucketSinkOptions = {}): SinkTarget {
    const prefix = options.prefix === undefined ? undefined : checkPrefix(options.prefix);
    return new (class extends SinkTarget {
      bind(o: SinkTargetBindOptions): SinkTargetConfig {
        return bucketConfig(bucket, prefix ?? `outputs/${o.job}/`, options.merge);
      }
    })();
  }

  /** Defines what the target needs and renders its destination; called once by the processor. */
  abstract bind(options: SinkTargetBindOptions): SinkTargetConfig;
}

/**
 * How the worker names an existing table or stream: by name when it is of the processor's account,
 * else (another account's, or one the synthesis cannot tell) by ARN. A name alone would reach the
 * table or stream of that name in the worker's own account, where the grant (on the ARN) does not
 * apply. Another region is refused with `otherRegion(region, processorRegion)`: the worker's
 * clients are of its own region, and an ARN does not move a request to another region.
 * The processor's source stream is named the same way (stream-processor.ts).
 */
export function accountReference(
  scope: Construct,
  resource: IResource,
  name: string,
  arn: string,
  otherRegion: (region: string, processorRegion: string) => string,
): string {
  const stack = Stack.of(scope);
  // An imported resource's env is the stack's (Table.fromTableArn): a literal ARN says more.
  const env = Token.isUnresolved(arn) ? resource.env : Arn.split(arn, ArnFormat.SLASH_RESOURCE_NAME);
  const region = env.region ?? resource.env.region;
  if (Token.compareStrings(region, stack.region) === TokenComparison.DIFFERENT) {
    throw new Error(otherRegion(region, stack.region));
  }
  const account = Token.compareStrings(env.account ?? resource.env.account, stack.account);
  return account === TokenComparison.SAME || account === TokenComparison.BOTH_UNRESOLVED ? name : arn;
}

function sinkReference(
  o: SinkTargetBindOptions,
  resource: IResource,
  name: string,
  arn: string,
  what: string,
): string {
  return accountReference(
    o.scope,
    resource,
    name,
    arn,
    (region, processorRegion) =>
      `sink "${o.sinkName}" is bound to a ${what} in region ${region}, but the processor runs in ${processorRegion}: a sink ${what} must be in the processor's region`,
  );
}

function tableDestination(
  tableName: string,
  key: readonly string[],
  options: { readonly valueAttribute?: string; readonly ordered?: boolean },
): string {
  const value = options.valueAttribute !== undefined ? `&value=${options.valueAttribute}` : '';
  const ordered = options.ordered !== undefined ? `&ordered=${options.ordered}` : '';
  return `dynamodb:${tableName}?key=${key.join(',')}${value}${ordered}`;
}

function grantUpsert(table: dynamodb.ITable, grantee: IGrantable): void {
  // DynamoDbUpsertSink writes conditional PutItems (ordered, the default) or BatchWriteItem puts.
  table.grant(grantee, 'dynamodb:BatchWriteItem', 'dynamodb:PutItem');
  // A conditional PutItem reads the stored item: decrypt too, as the table's grantWriteData does.
  table.encryptionKey?.grantEncryptDecrypt(grantee);
}

function bucketConfig(bucket: s3.IBucket, prefix: string, merge: boolean | undefined): SinkTargetConfig {
  const params = merge === undefined ? '' : `?merge=${merge}`;
  return {
    destination: `s3:${bucket.bucketName}/${prefix}${params}`,
    grant: (grantee) => objectStatements(bucket, prefix, grantee, merge ?? true),
  };
}

/**
 * Grants GetObject/PutObject under key prefixes of a bucket, and ListBucket (without it a GET of a
 * missing key is AccessDenied instead of NoSuchKey).
 */
export function grantObjects(bucket: s3.IBucket, prefixes: readonly string[], grantee: IGrantable): void {
  allowObjects(grantee, bucket, prefixes, ['s3:GetObject', 's3:PutObject']);
  allowMissingObjectReads(grantee, bucket);
}

/**
 * `s3:ListBucket` on the whole bucket. S3 answers a GetObject (or HeadObject) of a missing key
 * with 404 only to a caller allowed to list the bucket, and 403 to anyone else; floe reads a
 * missing object as an answer (a large checkpoint or delta not written, an S3 sink object on its
 * first write), so without it every such read would fail as access denied. S3 documents the rule
 * for the bucket-wide permission, so it is not narrowed to the job's prefixes.
 */
export function allowMissingObjectReads(grantee: IGrantable, bucket: s3.IBucket): void {
  grantee.grantPrincipal.addToPrincipalPolicy(
    new iam.PolicyStatement({ actions: ['s3:ListBucket'], resources: [bucket.bucketArn] }),
  );
}

/**
 * Allows object actions under key prefixes, and acknowledges the cdk-nag AwsSolutions-IAM5
 * finding of each `prefix*` resource: object keys under a prefix can only be named with a
 * wildcard, and each prefix belongs to this job alone.
 */
export function allowObjects(
  grantee: IGrantable,
  bucket: s3.IBucket,
  prefixes: readonly string[],
  actions: readonly string[],
): void {
  const resources = prefixes.map((p) => bucket.arnForObjects(`${p}*`));
  grantee.grantPrincipal.addToPrincipalPolicy(new iam.PolicyStatement({ actions: [...actions], resources }));
  const principal = grantee.grantPrincipal;
  if (!(principal instanceof Construct)) return;
  const stack = Stack.of(principal);
  for (const [i, resource] of resources.entries()) {
    Validations.of(principal).acknowledge({
      id: `AwsSolutions-IAM5[Resource::${flattenCfnReference(stack.resolve(resource))}]`,
      reason: `${actions.join(', ')} on the objects under the key prefix "${prefixes[i]}", which this job alone writes; the keys under a prefix can only be named with a wildcard.`,
    });
  }
}

/** How cdk-nag names a resource in a finding id (its flattenCfnReference): `<Logical.Arn>/prefix*`. */
export function flattenCfnReference(node: unknown): string {
  if (node === undefined) return '';
  if (typeof node === 'string') return node.replace(/\$\{/g, '<').replace(/}/g, '>');
  if (node !== null && typeof node === 'object') {
    const o = node as Record<string, unknown>;
    if (Array.isArray(o['Fn::Join'])) {
      const [delimiter, items] = o['Fn::Join'] as [string, unknown[]];
      return items.map(flattenCfnReference).join(delimiter);
    }
    if (o['Fn::Sub'] !== undefined) return flattenCfnReference(o['Fn::Sub']);
    if (Array.isArray(o['Fn::GetAtt'])) {
      const [resource, attribute] = o['Fn::GetAtt'] as [unknown, unknown];
      return `<${flattenCfnReference(resource)}.${flattenCfnReference(attribute)}>`;
    }
    if (o['Fn::ImportValue'] !== undefined) return flattenCfnReference(o['Fn::ImportValue']);
    if (o.Ref !== undefined) return `<${flattenCfnReference(o.Ref)}>`;
  }
  return JSON.stringify(node);
}
