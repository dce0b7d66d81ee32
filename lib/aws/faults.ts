/**
 * Fault injection for AWS SDK v3 clients: throttling and 5xx errors that the emulators never produce
 * (kinesis-local has no data-plane throttling, moto none at all), so tests can show that floe's own retry
 * code copes with them.
 *
 *   const faults = injectTransientFaults(kinesis, { rate: 0.1, seed: 7, operations: ['GetRecords'] });
 *   ...; expect(faults.stats.injected).toBeGreaterThan(0); faults.remove();
 *
 * Where it sits: a middleware at the `initialize` step, the outermost step of the SDK's middleware stack.
 * The SDK's retry middleware sits at `finalizeRequest` and re-sends a request that failed with a
 * throttling or 5xx error (3 attempts by default); a fault thrown inside that loop (at `finalizeRequest`,
 * `deserialize` or in the HTTP handler) would mostly be absorbed by those retries and floe's code would
 * rarely see one. Thrown at `initialize`, every injected fault reaches the caller exactly as a real error
 * does once the SDK has given up, so the project's own backoff, iterator and commit logic must handle it.
 *
 * By default a faulted call is not sent (the error means "nothing happened", as throttling does). With
 * `ambiguous` > 0, that fraction of the faults is thrown after the call succeeded, as a 500 whose request
 * nevertheless took effect (a PutRecords that wrote, a transaction that committed): idempotency tests.
 *
 * Deterministic: one seeded generator per injector draws whether each call fails and which error it gets,
 * so the same sequence of calls gets the same faults.
 */

import { InternalServerError, ThrottlingException } from '@aws-sdk/client-dynamodb';
import {
  InternalFailureException,
  LimitExceededException,
  ProvisionedThroughputExceededException,
} from '@aws-sdk/client-kinesis';
import { S3ServiceException } from '@aws-sdk/client-s3';
import { ConfigurationError, describeValue, seededRandom } from '../core/index.ts';

export interface TransientFaultOptions {
  /** Fraction of the matching calls that fail, in [0, 1]. */
  readonly rate: number;
  /** Seed of the deterministic generator. @default 1 */
  readonly seed?: number;
  /** Operation names to fault (`GetRecords` or `GetRecordsCommand`); every operation when absent. */
  readonly operations?: readonly string[];
  /** Fraction of the faults thrown after the call took effect (ambiguous outcome). @default 0 */
  readonly ambiguous?: number;
}

export interface FaultStats {
  /** Calls that matched `operations` (whether faulted or not). */
  calls: number;
  /** Faults thrown. */
  injected: number;
  /** Faults thrown after the call took effect. */
  ambiguous: number;
  readonly byOperation: Record<string, { calls: number; injected: number }>;
  /** Faults by error name (e.g. ProvisionedThroughputExceededException). */
  readonly byError: Record<string, number>;
}

export interface FaultInjector {
  readonly stats: FaultStats;
  /** The current rate; set it to change the fault rate (0 turns faults off). */
  rate: number;
  /** Takes the middleware out of the client's stack. */
  remove(): void;
}

/** What this module needs of an SDK v3 client (KinesisClient, DynamoDBClient, S3Client, DocumentClient). */
export interface AwsClientLike {
  readonly middlewareStack: object;
  readonly config: { readonly serviceId?: string | undefined };
}

type Handler = (args: { input?: unknown }) => Promise<unknown>;
interface HandlerContext {
  clientName?: string;
  commandName?: string;
}
interface MinimalStack {
  add(
    middleware: (next: Handler, context: HandlerContext) => Handler,
    options: { step: 'initialize'; name: string; priority: 'high' },
  ): void;
  remove(name: string): boolean;
}

let injectorCount = 0;

/**
 * Makes about `rate` of the client's calls fail with the throttling / server errors its service really
 * returns: Kinesis ProvisionedThroughputExceededException (data plane) or LimitExceededException
 * (control plane), and now and then InternalFailureException (500); DynamoDB ThrottlingException or
 * InternalServerError (500); S3 SlowDown (503). The errors are instances of the SDK's exception classes
 * with `$metadata.httpStatusCode` set, and carry `$floeInjected: true`.
 */
export function injectTransientFaults(client: AwsClientLike, options: TransientFaultOptions): FaultInjector {
  checkFraction('rate', options.rate);
  if (options.ambiguous !== undefined) checkFraction('ambiguous', options.ambiguous);
  const random = seededRandom(options.seed ?? 1);
  const operations =
    options.operations === undefined ? undefined : new Set(options.operations.map(operationName));
  const stats: FaultStats = { calls: 0, injected: 0, ambiguous: 0, byOperation: {}, byError: {} };
  const name = `floeTransientFaults${++injectorCount}`;
  const stack = client.middlewareStack as MinimalStack;
  const service = client.config.serviceId;
  const state = { rate: options.rate };

  stack.add(
    (next, context) => async (args) => {
      const operation = operationName(context.commandName ?? 'Unknown');
      if (operations !== undefined && !operations.has(operation)) return next(args);
      stats.calls++;
      const op = stats.byOperation[operation] ?? { calls: 0, injected: 0 };
      stats.byOperation[operation] = op;
      op.calls++;
      if (random() >= state.rate) return next(args);
      const pick = random();
      const afterEffect = options.ambiguous !== undefined && random() < options.ambiguous;
      const error = faultFor(
        service ?? context.clientName ?? '',
        operation,
        pick,
        afterEffect,
        args.input,
        stats,
      );
      stats.injected++;
      op.injected++;
      stats.byError[error.name] = (stats.byError[error.name] ?? 0) + 1;
      if (afterEffect) {
        const result = (await next(args)) as { output?: { Body?: { destroy?: () => void } } };
        result?.output?.Body?.destroy?.(); // the caller never sees it: free the connection
        stats.ambiguous++;
      }
      throw error;
    },
    { step: 'initialize', name, priority: 'high' },
  );

  return {
    stats,
    get rate() {
      return state.rate;
    },
    set rate(value: number) {
      checkFraction('rate', value);
      state.rate = value;
    },
    remove() {
      stack.remove(name);
    },
  };
}

function checkFraction(what: string, value: number): void {
  if (typeof value !== 'number' || !(value >= 0 && value <= 1)) {
    throw new ConfigurationError(
      `fault ${what} must be a number in [0, 1]; received ${describeValue(value)}`,
    );
  }
}

function operationName(name: string): string {
  return name.endsWith('Command') ? name.slice(0, -'Command'.length) : name;
}

const KINESIS_DATA_PLANE = new Set([
  'GetRecords',
  'GetShardIterator',
  'PutRecord',
  'PutRecords',
  'SubscribeToShard',
]);

function metadata(status: number, n: number) {
  return { httpStatusCode: status, requestId: `floe-fault-${n}`, attempts: 1, totalRetryDelay: 0 };
}

function faultFor(
  service: string,
  operation: string,
  pick: number,
  afterEffect: boolean,
  input: unknown,
  stats: FaultStats,
): Error {
  const n = stats.injected + 1;
  const where = describeTarget(input);
  const tag = (e: Error): Error => Object.assign(e, { $floeInjected: true });
  const s = service.toLowerCase();
  if (s.startsWith('kinesis')) {
    if (afterEffect || pick < 0.2) {
      return tag(
        new InternalFailureException({
          message: `Internal service failure${where}`,
          $metadata: metadata(500, n),
        }),
      );
    }
    if (KINESIS_DATA_PLANE.has(operation)) {
      return tag(
        new ProvisionedThroughputExceededException({
          message: `Rate exceeded for ${operation}${where}`,
          $metadata: metadata(400, n),
        }),
      );
    }
    return tag(
      new LimitExceededException({
        message: `Rate exceeded for ${operation}${where}`,
        $metadata: metadata(400, n),
      }),
    );
  }
  if (s.startsWith('dynamodb')) {
    if (afterEffect || pick < 0.5) {
      return tag(new InternalServerError({ message: 'Internal server error', $metadata: metadata(500, n) }));
    }
    return tag(
      new ThrottlingException({
        message: `Throughput exceeds the current capacity${where}; DynamoDB is automatically scaling`,
        $metadata: metadata(400, n),
      }),
    );
  }
  if (s.startsWith('s3')) {
    return tag(
      new S3ServiceException({
        name: 'SlowDown',
        $fault: 'server',
        message: 'Please reduce your request rate.',
        $metadata: metadata(503, n),
      }),
    );
  }
  const error = new Error(`Rate exceeded for ${operation} (${service || 'unknown service'})`);
  return tag(
    Object.assign(error, { name: 'ThrottlingException', $fault: 'client', $metadata: metadata(429, n) }),
  );
}

function describeTarget(input: unknown): string {
  if (typeof input !== 'object' || input === null) return '';
  const i = input as Record<string, unknown>;
  const parts = [
    typeof i.ShardId === 'string' ? `shard ${i.ShardId}` : undefined,
    typeof i.StreamName === 'string' ? `stream ${i.StreamName}` : undefined,
    typeof i.TableName === 'string' ? `table ${i.TableName}` : undefined,
    typeof i.Bucket === 'string' ? `bucket ${i.Bucket}` : undefined,
  ].filter((p) => p !== undefined);
  return parts.length > 0 ? ` (${parts.join(', ')})` : '';
}
