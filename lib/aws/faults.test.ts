import { DynamoDBClient, ListTablesCommand } from '@aws-sdk/client-dynamodb';
import {
  KinesisClient,
  ListShardsCommand,
  ListStreamsCommand,
  ProvisionedThroughputExceededException,
} from '@aws-sdk/client-kinesis';
import { ListBucketsCommand, S3Client } from '@aws-sdk/client-s3';
import { describe, expect, it } from 'vitest';
import { ConfigurationError, seededRandom, TransientBackendError } from '../core/index.ts';
import { injectTransientFaults } from './faults.ts';
import { BackoffDeadlineError, isTransientAwsError, withBackoff } from './retry.ts';

/** A request handler that answers every request with `body` and counts the requests that reached it. */
function fakeHandler(body: string, contentType = 'application/x-amz-json-1.1') {
  const handler = {
    requests: 0,
    async handle() {
      handler.requests++;
      return {
        response: {
          statusCode: 200,
          reason: 'OK',
          headers: { 'content-type': contentType, 'x-amzn-requestid': `req-${handler.requests}` },
          body: new TextEncoder().encode(body),
        },
      };
    },
    updateHttpClientConfig() {},
    httpHandlerConfigs: () => ({}),
  };
  return handler;
}

const base = { region: 'us-east-1', credentials: { accessKeyId: 't', secretAccessKey: 't' } };

function kinesisWithFakeHandler(maxAttempts = 3) {
  const handler = fakeHandler('{"StreamNames":[],"HasMoreStreams":false,"Shards":[]}');
  const client = new KinesisClient({
    ...base,
    endpoint: 'http://127.0.0.1:9',
    requestHandler: handler,
    maxAttempts,
  });
  return { client, handler };
}

async function outcomes(client: KinesisClient, calls: number): Promise<string[]> {
  const out: string[] = [];
  for (let i = 0; i < calls; i++) {
    try {
      if (i % 2 === 0) await client.send(new ListShardsCommand({ StreamName: 's' }));
      else await client.send(new ListStreamsCommand({}));
      out.push('ok');
    } catch (error) {
      out.push((error as Error).name);
    }
  }
  return out;
}

describe('injectTransientFaults', () => {
  it('throws outside the SDK retry loop: faulted calls send no request and are not retried', async () => {
    const { client, handler } = kinesisWithFakeHandler(3);
    const faults = injectTransientFaults(client, { rate: 0.3, seed: 11 });
    const results = await outcomes(client, 400);
    const failed = results.filter((r) => r !== 'ok').length;
    expect(faults.stats.calls).toBe(400);
    expect(faults.stats.injected).toBe(failed);
    expect(failed).toBeGreaterThan(80);
    expect(failed).toBeLessThan(160);
    // With the SDK's 3 attempts, a fault inside its loop would have been retried and hidden.
    expect(handler.requests).toBe(400 - failed);
    // Control-plane operations get LimitExceededException, some faults are 500s.
    expect(Object.keys(faults.stats.byError).sort()).toEqual([
      'InternalFailureException',
      'LimitExceededException',
    ]);
    client.destroy();
  });

  it('is deterministic for a seed and differs across seeds', async () => {
    const run = async (seed: number) => {
      const { client } = kinesisWithFakeHandler();
      injectTransientFaults(client, { rate: 0.2, seed });
      const r = await outcomes(client, 80);
      client.destroy();
      return r;
    };
    expect(await run(5)).toEqual(await run(5));
    expect(await run(5)).not.toEqual(await run(6));
  });

  it('filters by operation, can change its rate and be removed', async () => {
    const { client, handler } = kinesisWithFakeHandler();
    const faults = injectTransientFaults(client, { rate: 1, operations: ['ListShardsCommand'] });
    await expect(client.send(new ListShardsCommand({ StreamName: 's' }))).rejects.toMatchObject({
      name: expect.stringMatching(/^(LimitExceededException|InternalFailureException)$/),
    });
    await expect(client.send(new ListStreamsCommand({}))).resolves.toBeDefined();
    expect(faults.stats.byOperation).toEqual({ ListShards: { calls: 1, injected: 1 } });
    faults.rate = 0;
    await expect(client.send(new ListShardsCommand({ StreamName: 's' }))).resolves.toBeDefined();
    faults.rate = 1;
    faults.remove();
    await expect(client.send(new ListShardsCommand({ StreamName: 's' }))).resolves.toBeDefined();
    expect(handler.requests).toBe(3);
    expect(() => injectTransientFaults(client, { rate: 2 })).toThrow(ConfigurationError);
    client.destroy();
  });

  it('gives realistic errors per service', async () => {
    const kinesis = kinesisWithFakeHandler().client;
    injectTransientFaults(kinesis, { rate: 1, seed: 3, operations: ['GetRecords'] });
    const { GetRecordsCommand } = await import('@aws-sdk/client-kinesis');
    const errors = await Promise.all(
      Array.from({ length: 30 }, () =>
        kinesis.send(new GetRecordsCommand({ ShardIterator: 'x' })).catch((e: unknown) => e),
      ),
    );
    expect(errors.some((e) => e instanceof ProvisionedThroughputExceededException)).toBe(true);
    for (const e of errors) {
      expect(e).toMatchObject({ $floeInjected: true });
      expect(isTransientAwsError(e)).toBe(true);
    }
    kinesis.destroy();

    const ddb = new DynamoDBClient({
      ...base,
      endpoint: 'http://127.0.0.1:9',
      requestHandler: fakeHandler('{"TableNames":[]}', 'application/x-amz-json-1.0'),
    });
    const ddbFaults = injectTransientFaults(ddb, { rate: 1, seed: 9 });
    for (let i = 0; i < 20; i++) await ddb.send(new ListTablesCommand({})).catch(() => {});
    expect(Object.keys(ddbFaults.stats.byError).sort()).toEqual([
      'InternalServerError',
      'ThrottlingException',
    ]);
    ddb.destroy();

    const s3 = new S3Client({ ...base, endpoint: 'http://127.0.0.1:9', forcePathStyle: true });
    injectTransientFaults(s3, { rate: 1 });
    await expect(s3.send(new ListBucketsCommand({}))).rejects.toMatchObject({
      name: 'SlowDown',
      $fault: 'server',
      $metadata: { httpStatusCode: 503 },
    });
    s3.destroy();
  });

  it('ambiguous faults let the call take effect and still throw', async () => {
    const { client, handler } = kinesisWithFakeHandler();
    const faults = injectTransientFaults(client, { rate: 1, ambiguous: 1 });
    await expect(client.send(new ListStreamsCommand({}))).rejects.toMatchObject({
      name: 'InternalFailureException',
      $metadata: { httpStatusCode: 500 },
    });
    expect(handler.requests).toBe(1);
    expect(faults.stats.ambiguous).toBe(1);
    client.destroy();
  });
});

describe('withBackoff', () => {
  it('retries transient errors with growing jittered delays, then gives up with TransientBackendError', async () => {
    const delays: number[] = [];
    const throttle = Object.assign(new Error('slow down'), {
      name: 'ProvisionedThroughputExceededException',
    });
    let calls = 0;
    const failing = withBackoff(
      'op',
      async () => {
        calls++;
        throw throttle;
      },
      {
        maxRetries: 4,
        baseDelayMs: 100,
        maxDelayMs: 250,
        random: () => 0.999,
        sleep: async (ms) => void delays.push(ms),
      },
    );
    await expect(failing).rejects.toBeInstanceOf(TransientBackendError);
    expect(calls).toBe(5);
    expect(delays).toEqual([100, 200, 250, 250]);

    const fatal = Object.assign(new Error('no'), {
      name: 'AccessDeniedException',
      $metadata: { httpStatusCode: 400 },
    });
    let fatalCalls = 0;
    await expect(
      withBackoff('op', async () => {
        fatalCalls++;
        throw fatal;
      }),
    ).rejects.toBe(fatal);
    expect(fatalCalls).toBe(1);

    let n = 0;
    await expect(
      withBackoff('op', async () => (++n < 3 ? Promise.reject(throttle) : 'done'), { sleep: async () => {} }),
    ).resolves.toBe('done');
  });

  it('stops before a wait that would pass its deadline, with a retryable BackoffDeadlineError', async () => {
    const throttle = Object.assign(new Error('Rate exceeded for shard'), {
      name: 'ProvisionedThroughputExceededException',
      $metadata: { httpStatusCode: 400 },
    });
    let now = 1_000;
    const delays: number[] = [];
    let calls = 0;
    const failing = withBackoff(
      'GetRecords',
      async () => {
        calls++;
        throw throttle;
      },
      {
        baseDelayMs: 100,
        maxDelayMs: 5000,
        random: () => 0.999,
        clock: () => now,
        deadline: 1_000 + 1_000,
        sleep: async (ms) => {
          delays.push(ms);
          now += ms;
        },
      },
    );
    const error = await failing.catch((e: unknown) => e);
    expect(error).toBeInstanceOf(BackoffDeadlineError);
    expect(error).toBeInstanceOf(TransientBackendError);
    expect((error as BackoffDeadlineError).retryable).toBe(true);
    expect((error as BackoffDeadlineError).cause).toBe(throttle);
    // 100 + 200 + 400 ms slept (now 1,700); the next wait, 800 ms, would end past the deadline (2,000).
    expect(delays).toEqual([100, 200, 400]);
    expect(calls).toBe(4);
    expect(now).toBe(1_700);
    // An outer retry loop does not retry it either: its deadline has passed.
    expect(isTransientAwsError(error)).toBe(false);
    // A deadline already past still makes the first attempt, and no retry.
    let once = 0;
    await expect(
      withBackoff(
        'op',
        async () => {
          once++;
          throw throttle;
        },
        { clock: () => 5_000, deadline: 4_000, sleep: async () => {} },
      ),
    ).rejects.toBeInstanceOf(BackoffDeadlineError);
    expect(once).toBe(1);
  });

  it('seededRandom is deterministic and uniform enough', () => {
    const a = seededRandom(1);
    const b = seededRandom(1);
    const xs = Array.from({ length: 10_000 }, () => a());
    expect(xs.slice(0, 5)).toEqual(Array.from({ length: 5 }, () => b()));
    const mean = xs.reduce((s, x) => s + x, 0) / xs.length;
    expect(mean).toBeGreaterThan(0.48);
    expect(mean).toBeLessThan(0.52);
  });
});
