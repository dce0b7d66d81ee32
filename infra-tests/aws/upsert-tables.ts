// DynamoDB tables for the upsert sinks of tests and benchmarks: a string hash key and a number range key.
import { CreateTableCommand, type DynamoDBClient } from '@aws-sdk/client-dynamodb';

/** Creates `table` keyed by `hash` (S) and `range` (N), on demand; does not wait for it to be ACTIVE. */
export async function createUpsertTable(
  dynamodb: DynamoDBClient,
  table: string,
  hash: string,
  range: string,
): Promise<void> {
  await dynamodb.send(
    new CreateTableCommand({
      TableName: table,
      BillingMode: 'PAY_PER_REQUEST',
      AttributeDefinitions: [
        { AttributeName: hash, AttributeType: 'S' },
        { AttributeName: range, AttributeType: 'N' },
      ],
      KeySchema: [
        { AttributeName: hash, KeyType: 'HASH' },
        { AttributeName: range, KeyType: 'RANGE' },
      ],
    }),
  );
}
