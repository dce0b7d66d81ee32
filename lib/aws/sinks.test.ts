/** Unit tests of the AWS sinks with fake clients (the emulator tests are infra-tests/aws/sinks.test.ts). */
import type { AttributeValue, BatchWriteItemCommandInput, DynamoDBClient } from '@aws-sdk/client-dynamodb';
import type { KinesisClient, PutRecordsCommandInput } from '@aws-sdk/client-kinesis';
import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { ConfigurationError, StateSerializationError, TransientBackendError } from '../core/errors.ts';
import type { Output } from '../core/ports.ts';
import {
  DynamoDbUpsertSink,
  defaultS3ObjectKey,
  KINESIS_MAX_REQUEST_BYTES,
  KinesisStreamSink,
  outputOrder,
  outputRank,
  outputRecordJson,
  parseOutputId,
  SinkOutputError,
  toAttributeValue,
} from './sinks.ts';

const outputs = (n: number, value: (i: number) => unknown, sink = 'events'): Output[] =>
  Array.from({ length: n }, (_, i) => ({ id: `job/shardId-000000000000/5/${i}`, sink, value: value(i) }));

function fakeKinesis(respond?: (input: PutRecordsCommandInput, call: number) => unknown) {
  const inputs: PutRecordsCommandInput[] = [];
  const client = {
    send: async (command: { input: PutRecordsCommandInput }) => {
      inputs.push(command.input);
      return (
        respond?.(command.input, inputs.length - 1) ?? {
          FailedRecordCount: 0,
          Records: command.input.Records?.map(() => ({ SequenceNumber: '1', ShardId: 's' })),
        }
      );
    },
  } as unknown as KinesisClient;
  return { client, inputs };
}

describe('KinesisStreamSink', () => {
  it('splits requests at 5 MiB including partition keys, in order', async () => {
    const { client, inputs } = fakeKinesis();
    const sink = new KinesisStreamSink({ client, stream: 's' });
    const big = 'x'.repeat(450_000);
    const out = outputs(13, (i) => ({ i, big }));
    await sink.publish(out);
    expect(inputs.map((i) => i.Records?.length)).toEqual([11, 2]);
    for (const input of inputs) {
      const bytes = (input.Records ?? []).reduce(
        (n, r) => n + (r.Data?.length ?? 0) + Buffer.byteLength(r.PartitionKey ?? ''),
        0,
      );
      expect(bytes).toBeLessThanOrEqual(KINESIS_MAX_REQUEST_BYTES);
    }
    const ids = inputs.flatMap((i) =>
      (i.Records ?? []).map((r) => JSON.parse(Buffer.from(r.Data!).toString()).id),
    );
    expect(ids).toEqual(out.map((o) => o.id));
    expect(inputs[0]).toMatchObject({ StreamName: 's' });
  });

  it('uses the id as the default partition key (MD5 when over 256 characters), a StreamARN for ARNs', async () => {
    const { client, inputs } = fakeKinesis();
    const long: Output = { id: `${'j'.repeat(300)}/s/1/0`, sink: 'x', value: 1 };
    await new KinesisStreamSink({ client, stream: 'arn:aws:kinesis:us-east-1:1:stream/s' }).publish([
      ...outputs(1, () => 1),
      long,
    ]);
    expect(inputs[0]?.StreamARN).toBe('arn:aws:kinesis:us-east-1:1:stream/s');
    expect(inputs[0]?.Records?.[0]?.PartitionKey).toBe('job/shardId-000000000000/5/0');
    expect(inputs[0]?.Records?.[1]?.PartitionKey).toMatch(/^[0-9a-f]{32}$/);
  });

  it('rejects bad partition keys, oversized and non-JSON values before sending', async () => {
    const { client, inputs } = fakeKinesis();
    const badKey = new KinesisStreamSink({ client, stream: 's', partitionKey: () => '' });
    await expect(badKey.publish(outputs(1, () => 1))).rejects.toThrow(/1-256 characters.*returned ""/);
    const sink = new KinesisStreamSink({ client, stream: 's' });
    await expect(sink.publish(outputs(2, (i) => (i === 1 ? 'y'.repeat(1_048_576) : 1)))).rejects.toThrow(
      SinkOutputError,
    );
    await expect(sink.publish(outputs(1, () => 10n))).rejects.toThrow(StateSerializationError);
    expect(inputs).toHaveLength(0);
  });

  it('retries thrown transient errors, and maps a missing stream to a ConfigurationError', async () => {
    const throttled = Object.assign(new Error('slow down'), {
      name: 'ProvisionedThroughputExceededException',
    });
    const { client, inputs } = fakeKinesis((_input, call) => {
      if (call < 2) throw throttled;
      return undefined;
    });
    const sink = new KinesisStreamSink({ client, stream: 's', retry: { baseDelayMs: 1 } });
    await sink.publish(outputs(3, (i) => i));
    expect(inputs).toHaveLength(3);

    // Retried as the backend retries (isTransientAwsError): HTTP 429, a DNS failure.
    const tooMany = Object.assign(new Error('Too Many Requests'), {
      name: 'UnknownError',
      $metadata: { httpStatusCode: 429 },
    });
    const dns = Object.assign(new Error('getaddrinfo EAI_AGAIN kinesis'), { code: 'EAI_AGAIN' });
    const flaky = fakeKinesis((_input, call) => {
      if (call === 0) throw tooMany;
      if (call === 1) throw dns;
      return undefined;
    });
    await new KinesisStreamSink({ client: flaky.client, stream: 's', retry: { baseDelayMs: 1 } }).publish(
      outputs(1, () => 1),
    );
    expect(flaky.inputs).toHaveLength(3);

    const always = fakeKinesis(() => {
      throw throttled;
    });
    await expect(
      new KinesisStreamSink({
        client: always.client,
        stream: 's',
        retry: { baseDelayMs: 1, maxAttempts: 3 },
      }).publish(outputs(1, () => 1)),
    ).rejects.toThrow(TransientBackendError);
    expect(always.inputs).toHaveLength(3);

    const missing = fakeKinesis(() => {
      throw Object.assign(new Error('Stream s not found'), { name: 'ResourceNotFoundException' });
    });
    await expect(
      new KinesisStreamSink({ client: missing.client, stream: 's' }).publish(outputs(1, () => 1)),
    ).rejects.toThrow(ConfigurationError);
  });
});

describe('DynamoDbUpsertSink', () => {
  it('without conditional writes: the last output per key, 25 per BatchWriteItem', async () => {
    const inputs: BatchWriteItemCommandInput[] = [];
    const client = {
      send: async (command: { input: BatchWriteItemCommandInput }) => {
        inputs.push(command.input);
        return {};
      },
    } as unknown as DynamoDBClient;
    const sink = new DynamoDbUpsertSink({
      client,
      table: 'Counts',
      key: (v) => ({ page: (v as { page: string }).page }),
      concurrency: 1,
      conditionalWrites: false,
    });
    // 60 outputs over 30 pages: each page written twice; the second write wins.
    await sink.publish(outputs(60, (i) => ({ page: `p${i % 30}`, n: i })));
    expect(inputs.map((i) => i.RequestItems?.Counts?.length)).toEqual([25, 5]);
    const items = inputs.flatMap((i) => i.RequestItems?.Counts ?? []).map((r) => r.PutRequest?.Item);
    expect(items).toHaveLength(30);
    expect(items[0]).toEqual({
      page: { S: 'p0' },
      n: { N: '30' },
      floeOutputId: { S: 'job/shardId-000000000000/5/30' },
    });
  });

  it('rejects invalid keys', async () => {
    const client = { send: async () => ({}) } as unknown as DynamoDBClient;
    const sink = (key: (v: unknown) => Record<string, string | number>) =>
      new DynamoDbUpsertSink({ client, table: 'Counts', key });
    await expect(sink(() => ({})).publish(outputs(1, () => 1))).rejects.toThrow(/1 or 2 attributes/);
    await expect(sink(() => ({ a: 1, b: 2, c: 3 })).publish(outputs(1, () => 1))).rejects.toThrow(
      SinkOutputError,
    );
    await expect(sink(() => ({ a: Number.NaN })).publish(outputs(1, () => 1))).rejects.toThrow(
      SinkOutputError,
    );
    await expect(
      sink((v) => ({ a: (v as { x: { y: string } }).x.y })).publish(outputs(1, () => 1)),
    ).rejects.toThrow(/key function .* threw for output job\/shardId-000000000000\/5\/0/);
    await expect(sink(() => ({ a: 'k' })).publish(outputs(1, () => 'z'.repeat(500_000)))).rejects.toThrow(
      /limit is 409600/,
    );
  });
});

describe('helpers', () => {
  it('parses output ids from the right (jobs may contain /)', () => {
    expect(parseOutputId('a/b/shardId-1/12/3')).toEqual({
      job: 'a/b',
      shard: 'shardId-1',
      commit: 12,
      index: 3,
    });
    for (const bad of ['x', 'j/s/1', 'j/s/x/1', 'j/s/1/-1', '/s/1/2']) {
      expect(() => parseOutputId(bad)).toThrow(SinkOutputError);
    }
  });

  it("orders a job's upsert items by (generation, depth) rank, then (commit, index) within a shard", () => {
    const sign = (a: string, b: string): number => (a < b ? -1 : a > b ? 1 : 0);
    const tuple = (a: readonly number[], b: readonly number[]): number => {
      for (const [i, x] of a.entries()) if (x !== b[i]) return x < b[i]! ? -1 : 1;
      return 0;
    };
    /** The job part of an output id (job-control.ts outputJobId). */
    const jobPart = (job: string, generation: number) => (generation === 0 ? job : `${job}@${generation}`);
    const jobId = fc.stringMatching(/^[A-Za-z0-9][A-Za-z0-9._-]{0,20}$/);
    const whole = fc.nat({ max: Number.MAX_SAFE_INTEGER });
    const shard = fc.stringMatching(/^shardId-\d{12}$/);
    fc.assert(
      fc.property(jobId, shard, whole, whole, whole, whole, whole, whole, (job, s, g1, d1, g2, d2, c, i) => {
        // Rank: generation first, then depth, as numbers; every rank of the job starts `<job>/`.
        const r1 = outputRank(`${jobPart(job, g1)}/${s}/${c}/${i}`, d1);
        const r2 = outputRank(`${jobPart(job, g2)}/${s}/${i}/${c}`, d2);
        expect(sign(r1, r2)).toBe(tuple([g1, d1], [g2, d2]));
        expect(r1.startsWith(`${job}/`) && r2.startsWith(`${job}/`)).toBe(true);
      }),
    );
    fc.assert(
      fc.property(jobId, jobId, whole, whole, (a, b, g, d) => {
        // Another job's ranks never start with this job's prefix.
        fc.pre(a !== b);
        expect(outputRank(`${jobPart(b, g)}/s/1/0`, d).startsWith(`${a}/`)).toBe(false);
      }),
    );
    fc.assert(
      fc.property(jobId, whole, shard, whole, whole, whole, whole, (job, g, s, c1, i1, c2, i2) => {
        // Order within one job generation and shard: commit, then index, as numbers; in the
        // format of the versions before ranks (`<job[@generation]>/<shard>/<commit>/<index>`,
        // 16 digits each), whose writers compare their own order with it.
        const o1 = outputOrder(`${jobPart(job, g)}/${s}/${c1}/${i1}`);
        const o2 = outputOrder(`${jobPart(job, g)}/${s}/${c2}/${i2}`);
        expect(sign(o1, o2)).toBe(tuple([c1, i1], [c2, i2]));
        expect(o1).toBe(
          `${jobPart(job, g)}/${s}/${String(c1).padStart(16, '0')}/${String(i1).padStart(16, '0')}`,
        );
      }),
    );
    expect(outputRank('page-views@12/shardId-000000000003/7/1', 2)).toBe(
      'page-views/0000000000000012/0000000000000002',
    );
    expect(outputRank('page-views/shardId-000000000003/7/1', 0)).toBe(
      'page-views/0000000000000000/0000000000000000',
    );
    for (const bad of [-1, 1.5, Number.NaN]) {
      expect(() => outputRank('j/s/1/0', bad)).toThrow(ConfigurationError);
    }
  });

  it('formats records and keys', () => {
    expect(outputRecordJson({ id: 'j/s/1/0', sink: 'x', value: { b: 1 } })).toBe(
      '{"id":"j/s/1/0","value":{"b":1}}',
    );
    expect(outputRecordJson({ id: 'j/s/1/0', sink: 'x', value: undefined })).toBe(
      '{"id":"j/s/1/0","value":null}',
    );
    expect(
      defaultS3ObjectKey({
        prefix: 'p/',
        sink: 'floe.dead-letter',
        job: 'a/b',
        shard: 's-1',
        commit: 42,
        index: 0,
      }),
    ).toBe('p/floe.dead-letter/a%2Fb/s-1/000000000042.ndjson');
    expect(toAttributeValue({ a: [1, 'x', true, null], b: { c: 1.5 } })).toEqual({
      M: {
        a: { L: [{ N: '1' }, { S: 'x' }, { BOOL: true }, { NULL: true }] },
        b: { M: { c: { N: '1.5' } } },
      },
    });
  });

  it("refuses lists and maps nested over DynamoDB's 32 levels (31 around a scalar) as one output's error", () => {
    const nested = (containers: number): unknown => {
      let v: unknown = 'leaf';
      for (let i = 0; i < containers; i++) v = i % 2 === 0 ? { n: v } : [v];
      return v;
    };
    let depth = 0;
    for (let a: AttributeValue | undefined = toAttributeValue(nested(31)); a !== undefined; depth++) {
      a = a.M?.n ?? a.L?.[0];
    }
    expect(depth).toBe(32); // 31 containers and the leaf: the deepest item DynamoDB stores
    expect(() => toAttributeValue(nested(32))).toThrow(SinkOutputError);
    expect(() => toAttributeValue(nested(32))).toThrow(
      /nested more than 31 deep; DynamoDB stores at most 32 levels/,
    );
  });
});
