import { DynamoDBClient } from '@aws-sdk/client-dynamodb';
import { describe, expect, it } from 'vitest';
import type { JobRecord } from '../runtime/job-control.ts';
import { DynamoJobStore } from './job-store.ts';

const record = (job: string, savepointId: string | undefined): JobRecord => ({
  job,
  generation: 0,
  nextGeneration: 1,
  state: savepointId === undefined ? 'running' : 'restoring',
  stream: 's',
  ...(savepointId === undefined ? {} : { restore: { savepointId, generation: 0, startedAt: 1 } }),
  version: 1,
  updatedAt: 1,
});

/** A DynamoDB endpoint answering Scan with `pages` in turn, recording each request's input. */
function scanned(pages: ReadonlyArray<readonly JobRecord[]>) {
  const requests: Array<Record<string, unknown>> = [];
  const handler = {
    async handle(request: { body: string }) {
      requests.push(JSON.parse(request.body) as Record<string, unknown>);
      const index = requests.length - 1;
      const items = (pages[index] ?? []).map((r) => ({
        pk: { S: `@job/${r.job}` },
        body: { S: JSON.stringify(r) },
      }));
      const last =
        index + 1 < pages.length ? { LastEvaluatedKey: { pk: { S: `k${index}` }, sk: { S: 'job' } } } : {};
      return {
        response: {
          statusCode: 200,
          reason: 'OK',
          headers: { 'content-type': 'application/x-amz-json-1.0', 'x-amzn-requestid': `r${index}` },
          body: new TextEncoder().encode(JSON.stringify({ Items: items, ...last })),
        },
      };
    },
    updateHttpClientConfig() {},
    httpHandlerConfigs: () => ({}),
  };
  const client = new DynamoDBClient({
    region: 'us-east-1',
    credentials: { accessKeyId: 't', secretAccessKey: 't' },
    endpoint: 'http://127.0.0.1:9',
    requestHandler: handler,
  });
  return { client, requests };
}

describe('DynamoJobStore.restoresFrom', () => {
  it('scans the job records of the control table page by page for those restoring from the savepoint', async () => {
    const { client, requests } = scanned([
      [record('a', 'sp-1'), record('x', undefined)],
      [],
      [record('b', 'sp-1'), record('c', 'sp-10')],
    ]);
    const found = await new DynamoJobStore(client, 'control').restoresFrom('sp-1');
    expect(found.map((r) => r.job)).toEqual(['a', 'b']);
    expect(requests).toHaveLength(3);
    expect(requests[0]).toMatchObject({
      TableName: 'control',
      FilterExpression: 'begins_with(pk, :job) AND sk = :sk',
      ExpressionAttributeValues: { ':job': { S: '@job/' }, ':sk': { S: 'job' } },
      ConsistentRead: true,
    });
    expect(requests[0]!.ExclusiveStartKey).toBeUndefined();
    expect(requests[1]!.ExclusiveStartKey).toEqual({ pk: { S: 'k0' }, sk: { S: 'job' } });
    expect(requests[2]!.ExclusiveStartKey).toEqual({ pk: { S: 'k1' }, sk: { S: 'job' } });
    client.destroy();
  });
});
