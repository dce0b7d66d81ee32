/**
 * `floe produce --backend aws`: puts records into a Kinesis stream with PutRecords, one request
 * at a time (so a record never lands after a record of a later request; see putKinesisRecords).
 */

import { ListShardsCommand, ResourceNotFoundException } from '@aws-sdk/client-kinesis';
import { awsClients } from '../aws/job.ts';
import { createStream } from '../aws/resources.ts';
import {
  KINESIS_MAX_RECORD_BYTES,
  kinesisRequestFull,
  type PutKinesisEntry,
  putKinesisRecords,
} from '../aws/sinks.ts';
import { ConfigurationError } from '../core/index.ts';
import type { AppendRecord } from '../embedded/local-log.ts';
import { explainAwsError } from './run-aws.ts';

export interface ProduceAwsOptions {
  readonly stream: string;
  /** Create the stream with `shards` shards when missing (for emulators). */
  readonly createResources: boolean;
  readonly shards: number;
  readonly onProgress?: (written: number, total: number | undefined) => void;
}

export interface ProduceAwsSummary {
  readonly records: number;
  /** Data and partition keys, as Kinesis counts a record's size. */
  readonly bytes: number;
  readonly requests: number;
  /** Records sent again after a partial failure or a failed request. */
  readonly retried: number;
  /** Retried records that landed after a later record of their partition key (same request). */
  readonly overtaken: number;
}

/**
 * Puts `records` into the stream in PutRecords requests of at most 500 records / 5 MiB, each
 * written completely (its failed records resent with backoff) before the next is sent. Their
 * arrival times are not sent: Kinesis stamps its own.
 */
export async function produceToKinesis(
  options: ProduceAwsOptions,
  records: AsyncIterable<AppendRecord> | Iterable<AppendRecord>,
  total?: number,
): Promise<ProduceAwsSummary> {
  const clients = awsClients();
  const { kinesis } = clients;
  let summary = { records: 0, bytes: 0, requests: 0, retried: 0, overtaken: 0 };
  try {
    if (options.createResources) {
      await createStream(kinesis, options.stream, options.shards);
    } else {
      // ListShards, not DescribeStreamSummary: a producer's grants (StreamProcessor.grantProduce,
      // the CDK's grantWrite) cover ListShards, PutRecord and PutRecords only.
      try {
        await kinesis.send(new ListShardsCommand({ StreamName: options.stream, MaxResults: 1 }));
      } catch (error) {
        if (!(error instanceof ResourceNotFoundException)) throw error;
        const region = await kinesis.config.region();
        throw new ConfigurationError(
          `missing Kinesis stream "${options.stream}" in region ${region}; check --stream and AWS_REGION, or for an emulator pass --create-resources`,
        );
      }
    }
    const send = async (batch: PutKinesisEntry[], batchBytes: number): Promise<void> => {
      const result = await putKinesisRecords(
        {
          client: kinesis,
          target: { StreamName: options.stream },
          stream: options.stream,
          missingHint: 'check --stream and AWS_REGION',
          exhausted: `${summary.records} earlier records were written; producing again writes them again`,
        },
        batch,
      );
      summary = {
        records: summary.records + batch.length,
        bytes: summary.bytes + batchBytes,
        requests: summary.requests + 1,
        retried: summary.retried + result.retried,
        overtaken: summary.overtaken + result.overtaken,
      };
      options.onProgress?.(summary.records, total);
    };
    let batch: PutKinesisEntry[] = [];
    let batchBytes = 0;
    for await (const record of records) {
      const data = typeof record.data === 'string' ? Buffer.from(record.data, 'utf8') : record.data;
      const bytes = data.byteLength + Buffer.byteLength(record.partitionKey, 'utf8');
      if (bytes > KINESIS_MAX_RECORD_BYTES) {
        // Only generated records get here unchecked (a file's lines are checked first).
        throw new ConfigurationError(
          `a record of partition key "${record.partitionKey}" is ${bytes} bytes (data + partition key); a Kinesis record holds at most ${KINESIS_MAX_RECORD_BYTES} (1 MiB)`,
        );
      }
      if (kinesisRequestFull(batch.length, batchBytes, bytes)) {
        await send(batch, batchBytes);
        batch = [];
        batchBytes = 0;
      }
      batch.push({ Data: data, PartitionKey: record.partitionKey });
      batchBytes += bytes;
    }
    if (batch.length > 0) await send(batch, batchBytes);
    return summary;
  } catch (error) {
    throw explainAwsError(error);
  } finally {
    clients.destroy();
  }
}
