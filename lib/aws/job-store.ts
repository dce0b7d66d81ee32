/**
 * Job records (see lib/runtime/job-control.ts) in the job's DynamoDB control table: one item
 * `pk = "@job/<job>"`, `sk = "job"` (a job id never starts with "@", so it cannot collide with
 * the `<job>#<generation>` partitions of leases and outboxes), written with compare-and-set on
 * `version`. A removed record (delete) leaves the same item without `body`, with `freed` (its
 * nextGeneration) and the next version: FreedJob. Readers of records skip an item without a
 * body (an older floe too: it sees no record, and its creation of one fails its condition).
 */
import { ConditionalCheckFailedException, type DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { DynamoDBDocumentClient, GetCommand, PutCommand, ScanCommand } from '@aws-sdk/lib-dynamodb';
import { StateFormatError } from '../core/index.ts';
import type { JobLookup, JobRecord, JobStore } from '../runtime/job-control.ts';
import { withBackoff } from './retry.ts';

/** The key of job `job`'s record in its control table. */
export function jobRecordKey(job: string): { pk: string; sk: string } {
  return { pk: `@job/${job}`, sk: 'job' };
}

/**
 * The `restoring` attribute of a record with a restore in progress: what a restore's writes
 * that cannot check the JSON body condition on (DynamoBackend.importOutputs).
 */
export function restoreMarker(restore: {
  readonly savepointId: string;
  readonly generation: number;
}): string {
  return `${restore.savepointId}#${restore.generation}`;
}

export class DynamoJobStore implements JobStore {
  private readonly ddb: DynamoDBDocumentClient;

  constructor(
    dynamodb: DynamoDBClient,
    readonly controlTable: string,
  ) {
    this.ddb = DynamoDBDocumentClient.from(dynamodb);
  }

  private key(job: string): { pk: string; sk: string } {
    return jobRecordKey(job);
  }

  async get(job: string): Promise<JobRecord | undefined> {
    return (await this.lookup(job)).record;
  }

  /** One consistent GetItem. */
  async lookup(job: string): Promise<JobLookup> {
    const res = await withBackoff('GetItem', () =>
      this.ddb.send(
        new GetCommand({ TableName: this.controlTable, Key: this.key(job), ConsistentRead: true }),
      ),
    );
    const item = res.Item;
    if (typeof item?.body === 'string') {
      try {
        return { record: JSON.parse(item.body) as JobRecord, freed: undefined };
      } catch (error) {
        throw new StateFormatError(
          `the record of job ${job} in ${this.controlTable} is not valid JSON: ${String(error)}`,
        );
      }
    }
    if (typeof item?.freed !== 'number' || typeof item.version !== 'number') {
      return { record: undefined, freed: undefined };
    }
    return { record: undefined, freed: { job, nextGeneration: item.freed, version: item.version } };
  }

  /** A PutItem: it replaces the whole item, a removed record's `freed` included. */
  async put(record: JobRecord, expectedVersion: number | undefined): Promise<boolean> {
    try {
      await withBackoff('PutItem', () =>
        this.ddb.send(
          new PutCommand({
            TableName: this.controlTable,
            Item: {
              ...this.key(record.job),
              version: record.version,
              body: JSON.stringify(record),
              ...(record.restore === undefined ? {} : { restoring: restoreMarker(record.restore) }),
            },
            ConditionExpression: expectedVersion === undefined ? 'attribute_not_exists(pk)' : 'version = :v',
            ...(expectedVersion === undefined
              ? {}
              : { ExpressionAttributeValues: { ':v': expectedVersion } }),
          }),
        ),
      );
      return true;
    } catch (error) {
      if (isConditionFailed(error)) return false;
      throw error;
    }
  }

  /** One conditional PutItem that replaces the record with what lookup() reads as `freed`. */
  async delete(record: JobRecord): Promise<boolean> {
    try {
      await withBackoff('PutItem', () =>
        this.ddb.send(
          new PutCommand({
            TableName: this.controlTable,
            Item: { ...this.key(record.job), version: record.version + 1, freed: record.nextGeneration },
            ConditionExpression: 'version = :v AND attribute_exists(body)',
            ExpressionAttributeValues: { ':v': record.version },
          }),
        ),
      );
      return true;
    } catch (error) {
      if (isConditionFailed(error)) return false;
      throw error;
    }
  }

  /**
   * A Scan of the control table for the job records (filtered by their key prefix), whose
   * bodies are then checked: not by the `restoring` attribute, which a restore started by an
   * older floe did not write. The control table holds a few items per shard and generation
   * (leases with their checkpoints, undelivered outputs) beside the job records, so this reads
   * all of them once: for `floe savepoint delete`, not for anything frequent.
   */
  async restoresFrom(savepointId: string): Promise<JobRecord[]> {
    const out: JobRecord[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const page = await withBackoff('Scan', () =>
        this.ddb.send(
          new ScanCommand({
            TableName: this.controlTable,
            FilterExpression: 'begins_with(pk, :job) AND sk = :sk',
            ExpressionAttributeValues: { ':job': '@job/', ':sk': 'job' },
            ProjectionExpression: 'pk, body',
            ConsistentRead: true,
            ...(start === undefined ? {} : { ExclusiveStartKey: start }),
          }),
        ),
      );
      for (const item of page.Items ?? []) {
        if (typeof item.body !== 'string') continue;
        let record: JobRecord;
        try {
          record = JSON.parse(item.body) as JobRecord;
        } catch (error) {
          throw new StateFormatError(
            `the record ${String(item.pk)} in ${this.controlTable} is not valid JSON: ${String(error)}`,
          );
        }
        if (record.restore?.savepointId === savepointId) out.push(record);
      }
      start = page.LastEvaluatedKey;
    } while (start !== undefined);
    return out;
  }
}

function isConditionFailed(error: unknown): boolean {
  return (
    error instanceof ConditionalCheckFailedException ||
    (error as { name?: string }).name === 'ConditionalCheckFailedException'
  );
}
