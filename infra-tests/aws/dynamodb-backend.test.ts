/** The backend contract suite against DynamoDB + S3 on the emulators (or LocalStack / AWS). */
import { afterAll, beforeAll } from 'vitest';
import { DynamoBackend } from '../../lib/aws/dynamodb-backend.ts';
import { createBucket, createTables } from '../../lib/aws/resources.ts';
import { describeBackendContract } from '../../lib/core/testing/backend-contract.ts';
import { type AwsClients, awsClients, setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';

const env = await setupAwsTestEnv();
let clients: AwsClients;
const stateTable = uniqueName('floe-state');
const controlTable = uniqueName('floe-control');
const bucket = uniqueName('floe-bucket');

beforeAll(async () => {
  clients = awsClients(env);
  await createTables(clients.dynamodb, stateTable, controlTable);
  await createBucket(clients.s3, bucket);
});

afterAll(() => clients?.destroy());

let jobs = 0;
describeBackendContract('dynamodb+s3', async () => {
  // Each test gets its own job id: the tables are shared, the scope is not.
  const job = `contract-${++jobs}-${Date.now().toString(36)}`;
  const open = (): DynamoBackend =>
    new DynamoBackend({ dynamodb: clients.dynamodb, s3: clients.s3, stateTable, controlTable, bucket, job });
  return { store: open(), reopen: async () => open(), close: async () => {} };
});
