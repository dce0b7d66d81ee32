import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { KinesisClient } from '@aws-sdk/client-kinesis';
import { S3Client } from '@aws-sdk/client-s3';
import { afterAll, describe, expect, it } from 'vitest';
import { ConfigurationError } from '../core/errors.ts';
import { DynamoDbUpsertSink, KinesisStreamSink, S3ObjectSink } from './sinks.ts';
import { parseSinkBindings, parseSinkSpec, routingSinkFromSpecs } from './sinks-config.ts';

// Never used for requests: building sinks only.
const options = { region: 'us-east-1', credentials: { accessKeyId: 'x', secretAccessKey: 'x' } };
const clients = {
  kinesis: new KinesisClient(options),
  dynamodb: new DynamoDBClient(options),
  s3: new S3Client(options),
};
afterAll(() => {
  clients.kinesis.destroy();
  clients.dynamodb.destroy();
  clients.s3.destroy();
});

describe('parseSinkSpec', () => {
  it('parses each destination type', () => {
    expect(parseSinkSpec('page-view-counts=dynamodb:PageViewCounts?key=page,windowStart')).toEqual({
      sink: 'page-view-counts',
      spec: 'page-view-counts=dynamodb:PageViewCounts?key=page,windowStart',
      type: 'dynamodb',
      table: 'PageViewCounts',
      key: ['page', 'windowStart'],
    });
    expect(parseSinkSpec('totals=dynamodb:Totals?key=id&value=result')).toMatchObject({
      type: 'dynamodb',
      table: 'Totals',
      key: ['id'],
      valueAttribute: 'result',
    });
    expect(parseSinkSpec('totals=dynamodb:Totals?key=id&ordered=false')).toMatchObject({ ordered: false });
    expect(() => parseSinkSpec('totals=dynamodb:Totals?key=id&ordered=no')).toThrow(
      /ordered= must be true or false; received "no"/,
    );
    expect(parseSinkSpec('alerts=kinesis:alerts-stream')).toMatchObject({
      sink: 'alerts',
      type: 'kinesis',
      stream: 'alerts-stream',
    });
    expect(parseSinkSpec(' alerts = kinesis:alerts?partitionKey=user ')).toMatchObject({
      sink: 'alerts',
      stream: 'alerts',
      partitionKey: 'user',
    });
    expect(parseSinkSpec('a=kinesis:arn:aws:kinesis:us-east-1:123456789012:stream/s1')).toMatchObject({
      stream: 'arn:aws:kinesis:us-east-1:123456789012:stream/s1',
    });
    expect(parseSinkSpec('floe.dead-letter=s3:my-bucket/prefix/')).toMatchObject({
      sink: 'floe.dead-letter',
      type: 's3',
      bucket: 'my-bucket',
      prefix: 'prefix/',
    });
    expect(parseSinkSpec('x=s3://my-bucket/a/b?merge=false')).toMatchObject({
      bucket: 'my-bucket',
      prefix: 'a/b/',
      merge: false,
    });
    expect(parseSinkSpec('x=s3:my-bucket')).toMatchObject({ bucket: 'my-bucket', prefix: '' });
    expect(parseSinkSpec('*=S3:my-bucket/rest')).toMatchObject({ sink: '*', type: 's3', prefix: 'rest/' });
  });

  it.each([
    ['no-equals', /no '=' between the sink name and its destination/],
    ['=kinesis:s', /sink name before '=' is empty/],
    ['a=alerts', /has no TYPE: prefix \(one of kinesis, dynamodb, s3\)/],
    ['a=sqs:queue', /unknown destination type "sqs"; expected one of kinesis, dynamodb, s3/],
    ['a=kinesis:', /Kinesis stream name "" must be 1-128 characters/],
    ['a=kinesis:bad name', /Kinesis stream name "bad name"/],
    ['a=kinesis:s?key=x', /unknown parameter "key" for a kinesis destination; allowed: partitionKey/],
    ['a=dynamodb:Table', /needs \?key=FIELD\[,FIELD\]/],
    ['a=dynamodb:T?key=id', /DynamoDB table name "T" must be 3-255 characters/],
    ['a=dynamodb:Table?key=a,b,c', /key= names 3 fields/],
    ['a=dynamodb:Table?key=a,a', /names a field twice/],
    ['a=dynamodb:Table?key=a,', /key= needs a field name/],
    ['a=dynamodb:Table?key=', /parameter key= has no value/],
    ['a=dynamodb:Table?key=a&key=b', /parameter key= is given twice/],
    ['a=s3:Bad_Bucket/x', /S3 bucket name "Bad_Bucket" must be 3-63 characters/],
    ['a=s3:', /S3 bucket name ""/],
    ['a=s3:bucket//x', /must not start with '\/'/],
    ['a=s3:bucket?merge=maybe', /merge= must be true or false/],
  ])('rejects %s', (spec, message) => {
    let error: unknown;
    try {
      parseSinkSpec(spec);
    } catch (e) {
      error = e;
    }
    expect(error).toBeInstanceOf(ConfigurationError);
    expect((error as Error).message).toMatch(message);
    expect((error as Error).message).toContain(JSON.stringify(spec));
  });
});

describe('parseSinkBindings', () => {
  it('accepts CLI flags, JSON arrays, JSON objects and separated text', () => {
    const flags = ['a=kinesis:s1', 'b=s3:bucket-1/p'];
    expect(parseSinkBindings(flags).map((b) => b.sink)).toEqual(['a', 'b']);
    expect(parseSinkBindings(JSON.stringify(flags)).map((b) => b.sink)).toEqual(['a', 'b']);
    expect(parseSinkBindings('a=kinesis:s1\nb=s3:bucket-1/p; c=dynamodb:Table?key=k')).toHaveLength(3);
    const fromObject = parseSinkBindings('{"page-view-counts": "dynamodb:Counts?key=page,windowStart"}');
    expect(fromObject).toEqual([
      {
        sink: 'page-view-counts',
        spec: 'page-view-counts=dynamodb:Counts?key=page,windowStart',
        type: 'dynamodb',
        table: 'Counts',
        key: ['page', 'windowStart'],
      },
    ]);
  });

  it('rejects duplicates, empty input, bad JSON and non-string destinations', () => {
    expect(() => parseSinkBindings(['a=kinesis:s1', 'a=kinesis:s2'])).toThrow(
      /sink "a" is bound twice: "a=kinesis:s1" and "a=kinesis:s2"/,
    );
    expect(() => parseSinkBindings([])).toThrow(/no sink bindings were given/);
    expect(() => parseSinkBindings('')).toThrow(/no sink bindings were given/);
    expect(() => parseSinkBindings('{"a": ')).toThrow(/not valid JSON/);
    expect(() => parseSinkBindings({ a: 5 })).toThrow(/destination of sink "a" must be a string/);
    expect(() => parseSinkBindings(42)).toThrow(ConfigurationError);
  });
});

describe('routingSinkFromSpecs', () => {
  it('builds one sink per binding, with * as the fallback', () => {
    const routing = routingSinkFromSpecs(
      [
        'counts=dynamodb:Counts?key=page,windowStart',
        'alerts=kinesis:alerts',
        'floe.dead-letter=s3:bucket-1/dl/',
        '*=s3:bucket-1/rest/',
      ],
      clients,
    );
    expect(routing.sinkNames).toEqual(['counts', 'alerts', 'floe.dead-letter']);
    expect(routing.route('counts')).toBeInstanceOf(DynamoDbUpsertSink);
    expect(routing.route('alerts')).toBeInstanceOf(KinesisStreamSink);
    expect(routing.route('floe.dead-letter')).toBeInstanceOf(S3ObjectSink);
    expect((routing.route('floe.late') as S3ObjectSink).prefix).toBe('rest/');
  });

  it('needs the client of each bound service and a binding for each required sink', () => {
    expect(() => routingSinkFromSpecs(['a=kinesis:s1'], { s3: clients.s3 })).toThrow(
      /sink "a" is bound to kinesis \("a=kinesis:s1"\) but no Kinesis client was given/,
    );
    expect(() =>
      routingSinkFromSpecs(['a=kinesis:s1'], clients, { requiredSinks: ['a', 'b', 'floe.dead-letter'] }),
    ).toThrow(/no destination is configured for sink\(s\) "b", "floe.dead-letter" \(configured: "a"\)/);
  });
});
