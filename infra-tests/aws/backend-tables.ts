// One infra-test fixture's DynamoBackend tables (fresh state and control tables, a unique job) and backends on them.
import { DeleteTableCommand } from '@aws-sdk/client-dynamodb';
import { DynamoBackend, type DynamoBackendOptions } from '../../lib/aws/dynamodb-backend.ts';
import { createTables } from '../../lib/aws/resources.ts';
import { type AwsClients, uniqueName } from '../env/aws-clients.ts';

export interface BackendTables {
  readonly job: string;
  readonly stateTable: string;
  readonly controlTable: string;
  /** A DynamoBackend of the job on these tables, with fast retries for the emulators; `overrides` win. */
  open(overrides?: Partial<DynamoBackendOptions>): DynamoBackend;
  /** Deletes both tables (errors ignored). */
  close(): Promise<void>;
}

/**
 * Creates the tables of fixture `n`: `<prefix>-state-<n>-…` and `<prefix>-control-<n>-…`, job
 * `<prefix>-<n>-<time>`. Tables per fixture: moto's TransactWriteItems deep-copies the whole table
 * once per action (./moto-transactions.ts).
 */
export async function createBackendTables(
  clients: Pick<AwsClients, 'dynamodb' | 's3'>,
  bucket: string,
  prefix: string,
  n: number,
): Promise<BackendTables> {
  const stateTable = uniqueName(`${prefix}-state-${n}`);
  const controlTable = uniqueName(`${prefix}-control-${n}`);
  const job = `${prefix}-${n}-${Date.now().toString(36)}`;
  await createTables(clients.dynamodb, stateTable, controlTable);
  return {
    job,
    stateTable,
    controlTable,
    open: (overrides = {}) =>
      new DynamoBackend({
        dynamodb: clients.dynamodb,
        s3: clients.s3,
        stateTable,
        controlTable,
        bucket,
        job,
        retry: { baseDelayMs: 2, maxDelayMs: 50 },
        ...overrides,
      }),
    async close() {
      await Promise.all(
        [stateTable, controlTable].map((TableName) =>
          clients.dynamodb.send(new DeleteTableCommand({ TableName })).catch(() => {}),
        ),
      );
    },
  };
}
