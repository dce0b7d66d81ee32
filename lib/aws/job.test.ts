import net from 'node:net';
import { afterEach, describe, expect, it, vi } from 'vitest';
import { ConfigurationError, TransientBackendError } from '../core/index.ts';
import { awsClients, awsJobConfigFromEnv } from './job.ts';
import { DynamoDbUpsertSink, KinesisStreamSink, S3ObjectSink } from './sinks.ts';

const base = {
  FLOE_JOB: 'pv',
  FLOE_STREAM: 'clicks',
  FLOE_STATE_TABLE: 'state',
  FLOE_CONTROL_TABLE: 'control',
  FLOE_BUCKET: 'bucket',
};

describe('awsJobConfigFromEnv: FLOE_DELTA_APPLY', () => {
  it('is absent by default (the backend default applies)', () => {
    expect(awsJobConfigFromEnv(base).deltaApply).toBeUndefined();
    expect(awsJobConfigFromEnv({ ...base, FLOE_DELTA_APPLY: '' }).deltaApply).toBeUndefined();
  });

  it('takes items or transactions', () => {
    expect(awsJobConfigFromEnv({ ...base, FLOE_DELTA_APPLY: 'transactions' }).deltaApply).toBe(
      'transactions',
    );
    expect(awsJobConfigFromEnv({ ...base, FLOE_DELTA_APPLY: 'items' }).deltaApply).toBe('items');
  });

  it('rejects anything else, naming the choices', () => {
    expect(() => awsJobConfigFromEnv({ ...base, FLOE_DELTA_APPLY: 'batch' })).toThrow(ConfigurationError);
    expect(() => awsJobConfigFromEnv({ ...base, FLOE_DELTA_APPLY: 'batch' })).toThrow(/items, transactions/);
  });
});

describe('awsJobConfigFromEnv: FLOE_COMMIT_INTERVAL_MS', () => {
  it('is absent by default and read as whole milliseconds', () => {
    expect(awsJobConfigFromEnv(base).commitIntervalMs).toBeUndefined();
    expect(awsJobConfigFromEnv({ ...base, FLOE_COMMIT_INTERVAL_MS: '1000' }).commitIntervalMs).toBe(1000);
    expect(awsJobConfigFromEnv({ ...base, FLOE_COMMIT_INTERVAL_MS: '0' }).commitIntervalMs).toBe(0);
  });

  it('rejects anything else', () => {
    for (const bad of ['-1', '1.5', 'soon', ' ']) {
      expect(() => awsJobConfigFromEnv({ ...base, FLOE_COMMIT_INTERVAL_MS: bad })).toThrow(
        /FLOE_COMMIT_INTERVAL_MS must be a whole number of milliseconds >= 0/,
      );
    }
  });
});

describe('awsJobConfigFromEnv: FLOE_MIN_GET_RECORDS_INTERVAL_MS', () => {
  it('is absent by default (the source paces at 200 ms) and read as whole milliseconds', () => {
    expect(awsJobConfigFromEnv(base).minGetRecordsIntervalMs).toBeUndefined();
    expect(
      awsJobConfigFromEnv({ ...base, FLOE_MIN_GET_RECORDS_INTERVAL_MS: '400' }).minGetRecordsIntervalMs,
    ).toBe(400);
    for (const bad of ['-1', '0.5', 'fast']) {
      expect(() => awsJobConfigFromEnv({ ...base, FLOE_MIN_GET_RECORDS_INTERVAL_MS: bad })).toThrow(
        /FLOE_MIN_GET_RECORDS_INTERVAL_MS must be a whole number of milliseconds >= 0/,
      );
    }
  });
});

describe('awsJobConfigFromEnv: FLOE_MAX_CACHED_KEYS', () => {
  it('is absent by default and read as a whole number of keys', () => {
    expect(awsJobConfigFromEnv(base).maxCachedKeys).toBeUndefined();
    expect(awsJobConfigFromEnv({ ...base, FLOE_MAX_CACHED_KEYS: '250000' }).maxCachedKeys).toBe(250_000);
  });

  it('rejects anything else', () => {
    for (const bad of ['0', '-5', '2.5', 'many']) {
      expect(() => awsJobConfigFromEnv({ ...base, FLOE_MAX_CACHED_KEYS: bad })).toThrow(
        /FLOE_MAX_CACHED_KEYS must be a whole number of keys >= 1/,
      );
    }
  });
});

describe('awsJobConfigFromEnv: FLOE_GENERATION', () => {
  it('is 0 by default and read as a whole number', () => {
    expect(awsJobConfigFromEnv(base).generation).toBe(0);
    expect(awsJobConfigFromEnv({ ...base, FLOE_GENERATION: '' }).generation).toBe(0);
    expect(awsJobConfigFromEnv({ ...base, FLOE_GENERATION: '0' }).generation).toBe(0);
    expect(awsJobConfigFromEnv({ ...base, FLOE_GENERATION: '3' }).generation).toBe(3);
  });

  it('rejects anything else (it would end up in every state key and output id)', () => {
    for (const bad of ['abc', '1.5', '-3', ' ', 'NaN', 'Infinity']) {
      expect(() => awsJobConfigFromEnv({ ...base, FLOE_GENERATION: bad })).toThrow(ConfigurationError);
      expect(() => awsJobConfigFromEnv({ ...base, FLOE_GENERATION: bad })).toThrow(
        /FLOE_GENERATION must be a whole number >= 0; received/,
      );
    }
  });
});

describe('awsClients: a request without an answer', () => {
  afterEach(() => {
    vi.unstubAllEnvs();
  });

  // A connection the service never answers (dropped without a reset): the publish used to wait
  // forever, holding the shard (and, under floe run, the round of every shard). The 30 s
  // requestTimeout given to emulator clients only logged a warning; DynamoDB had no timeout at all.
  it('fails after the idle timeout, as a retryable error of the sink, for every service', async () => {
    const server = net.createServer(() => {}); // accepts connections, never answers
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const url = `http://127.0.0.1:${(server.address() as net.AddressInfo).port}`;
    const env = {
      AWS_REGION: 'us-east-1',
      AWS_ACCESS_KEY_ID: 'test',
      AWS_SECRET_ACCESS_KEY: 'test',
      AWS_ENDPOINT_URL: url,
      AWS_MAX_ATTEMPTS: '1',
    };
    for (const [name, value] of Object.entries(env)) vi.stubEnv(name, value);
    const clients = awsClients(env, { socketIdleTimeoutMs: 500 });
    const retry = { maxAttempts: 1 };
    const sinks = [
      new DynamoDbUpsertSink({ client: clients.dynamodb, table: 'table', key: () => ({ k: 'a' }), retry }),
      new KinesisStreamSink({ client: clients.kinesis, stream: 'stream', retry }),
      new S3ObjectSink({ client: clients.s3, bucket: 'bucket' }),
    ];
    try {
      // A request that hangs loses the race (the outcome is then 'still waiting', not an error).
      const outcomes = await Promise.all(
        sinks.map((sink) =>
          Promise.race([
            sink.publish([{ id: 'j/s/1/0', sink: 'x', value: {} }]).catch((e: unknown) => e),
            new Promise((resolve) => setTimeout(() => resolve('still waiting'), 10_000)),
          ]),
        ),
      );
      for (const outcome of outcomes) expect(outcome).toBeInstanceOf(TransientBackendError);
    } finally {
      clients.destroy();
      server.close();
    }
  }, 20_000);
});
