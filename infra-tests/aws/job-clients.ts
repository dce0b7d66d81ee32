// The AWS clients a job or backend under test runs on: the test environment's clients, with moto's transactions isolated.
import { type AwsClients, awsClients, type ClientOptions } from '../env/sdk-clients.ts';
import type { AwsTestEnv } from '../env/types.ts';
import { isolateMotoTransactions } from './moto-transactions.ts';

/** awsClients(env, options), with TransactWriteItems run alone when DynamoDB is moto (./moto-transactions.ts). */
export function jobClients(env: AwsTestEnv, options: ClientOptions = {}): AwsClients {
  const clients = awsClients(env, options);
  if (env.engines.dynamodb === 'moto') isolateMotoTransactions(clients.dynamodb);
  return clients;
}
