/**
 * DynamoDB + S3 backend: keyed state, leases with fencing, checkpoints and the outbox, with
 * the commit protocol of docs/protocol.md.
 *
 * Tables (see createBackendTables):
 *   state   pk = `${job}#${generation}#${address}`      v (JSON) | tombstone, sh/f/c version
 *   control pk = `${job}#${generation}`, sk = `shard#${shardId}`   lease + checkpoint
 *           pk = `${job}#${generation}`, sk = `out#${shardId}#${commit}`  outbox of one commit
 * Bucket:   `${prefix}${job}/${generation}/deltas/${shardId}/${commit}-${fence}.json` (large commits)
 *           `${prefix}${job}/${generation}/checkpoints/${shardId}/${commit}-${fence}.json` (large
 *           checkpoints; `${commit}-restored-${hash}.json` when imported from a savepoint)
 * Objects are written with If-None-Match, so no writer replaces another's.
 *
 * Small commits (<= 100 actions, under 3.9 MB, outputs that fit one 350 KB outbox item) are one
 * TransactWriteItems whose lease update is conditional on the fence and the previous commit
 * number. Larger commits write one immutable S3 delta, then commit by a conditional update of
 * the lease item pointing at it (the commit point), then apply the delta with version-conditioned
 * writes and clear the pointer. A new lease holder re-applies a pending delta before it reads
 * anything (redo). A heartbeat renews the lease while a delta is applied or redone, which can
 * take longer than the lease (withHeartbeat).
 */
import { createHash } from 'node:crypto';
import {
  ConditionalCheckFailedException,
  type DynamoDBClient,
  TransactionCanceledException,
} from '@aws-sdk/client-dynamodb';
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  NoSuchKey,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import {
  BatchGetCommand,
  DeleteCommand,
  DynamoDBDocumentClient,
  GetCommand,
  PutCommand,
  QueryCommand,
  ScanCommand,
  TransactWriteCommand,
  type TransactWriteCommandInput,
  UpdateCommand,
} from '@aws-sdk/lib-dynamodb';
import {
  type CheckpointStore,
  type Commit,
  ConfigurationError,
  coPartitioningError,
  depthOf,
  describeValue,
  deserializeCheckpoint,
  FencedError,
  isTimerChunkAddress,
  type Lease,
  LeaseUnavailableError,
  type Output,
  outputValueJson,
  type ShardCheckpoint,
  type StateAddress,
  StateFormatError,
  type StateMutation,
  type StateReader,
  StateSerializationError,
  type StateStore,
  serializeCheckpoint,
  stateEntryBytes,
  TransientBackendError,
} from '../core/index.ts';
import { jobRecordKey } from './job-store.ts';
import { type BackoffOptions, isTransientAwsError, withBackoff } from './retry.ts';
import {
  cancellationOf,
  planChunks,
  TRANSIENT_CANCELLATION_CODES,
  type WriteChunkOptions,
  writeChunk,
} from './transact-chunks.ts';

export interface DynamoBackendOptions {
  readonly dynamodb: DynamoDBClient;
  readonly s3: S3Client;
  readonly stateTable: string;
  readonly controlTable: string;
  readonly bucket: string;
  /** Key prefix inside the bucket. @default '' */
  readonly bucketPrefix?: string;
  readonly job: string;
  /** State generation (a replay restores into a new one). @default 0 */
  readonly generation?: number;
  /** Tombstones of deleted state expire after this long (DynamoDB TTL attribute `ttl`). @default 7 days */
  readonly tombstoneTtlSeconds?: number;
  /** Backoff of throttled and failed calls. */
  readonly retry?: BackoffOptions;
  /** Called at named protocol steps; fault-injection tests throw from it. */
  readonly onStep?: (step: DynamoCommitStep) => void | Promise<void>;
  /**
   * How a committed S3 delta (the large-commit path) is applied to the state table. Both write
   * every item under the same version condition, so a stale writer never overwrites newer state,
   * and both skip exactly the items whose stored version is newer.
   *
   * - `'items'`: one conditional PutItem per mutation, 16 in flight. 1 WCU per KB written, one
   *   request per item.
   * - `'transactions'`: TransactWriteItems of up to 100 conditional puts (under 4 MB), 4 chunks in
   *   flight; a chunk cancelled because some items' conditions failed is sent again without them.
   *   One request per 100 items, but transactional writes consume 2 WCU per KB (twice the
   *   `'items'` cost for the same items), and concurrent writers of an item can cancel each other
   *   (TransactionConflict; retried with backoff).
   *
   * The default is `'items'`: it costs half the write units. On moto (the emulator of the tests
   * and of bench/commit) `'transactions'` is much slower, not faster: moto deep-copies the whole
   * table once per action of a transaction (see infra-tests/aws/moto-transactions.ts).
   * @default 'items'
   */
  readonly deltaApply?: DeltaApplyMode;
  /**
   * Commits of more actions than this (the checkpoint, the outbox item and one per state
   * mutation) take the S3 delta path instead of one TransactWriteItems. Lowering it moves
   * mid-sized commits to the delta path, whose items are plain conditional puts (1 WCU per KB
   * with `deltaApply: 'items'`, where transactional writes cost 2) at the price of an S3 PUT and GET
   * and a commit-point update per commit. Tests also use it to reach the delta path with few
   * writes. An integer from 1 to 100.
   * @default 100 (DynamoDB's limit of actions per TransactWriteItems)
   */
  readonly maxTransactionActions?: number;
  /**
   * Renew the lease while a delta is uploaded and applied (commit) or redone (acquireLease), every
   * third of its TTL: the worker renews only between batches, and an apply can outlast the TTL.
   * Tests that model a writer stalled past its lease (a frozen process renews nothing) turn it off.
   * @default true
   */
  readonly leaseHeartbeat?: boolean;
  /**
   * Measures the time elapsed since a lease was acquired or renewed, for the heartbeat (which
   * renews to the caller's `now` of then, plus that time, plus the TTL, so it follows whatever
   * clock the caller passes). Tests with a virtual clock that stands still pass a constant.
   * @default Date.now
   */
  readonly clock?: () => number;
}

/** See DynamoBackendOptions.deltaApply. */
export type DeltaApplyMode = 'transactions' | 'items';
export const DELTA_APPLY_MODES: readonly DeltaApplyMode[] = ['items', 'transactions'];

/** Protocol steps, in order, where tests can inject crashes. */
export type DynamoCommitStep =
  | 'before-transaction'
  | 'after-delta-upload'
  | 'after-commit-point'
  | 'mid-apply'
  | 'after-apply';

/** DynamoDB TransactWriteItems limits (actions per transaction, bytes per transaction). */
export const TRANSACTION_MAX_ACTIONS = 100;
export const TRANSACTION_MAX_BYTES = 4_000_000;
/** Keep items comfortably below DynamoDB's 400 KB item limit. */
const ITEM_SOFT_LIMIT = 350_000;
/** What a state item holds beyond its address and value (attribute names, version attributes). */
const ITEM_OVERHEAD_BYTES = 64;
const CHECKPOINT_INLINE_LIMIT = 200_000;
/** DynamoDB's limit on a partition key value. */
const PARTITION_KEY_MAX_BYTES = 2048;

interface LeaseItem {
  pk: string;
  sk: string;
  owner?: string;
  leaseExpiresAt?: number;
  fence?: number;
  commitNumber?: number;
  cp?: string;
  cpRef?: string;
  pendingDelta?: string;
}

interface Delta {
  readonly checkpoint: string;
  readonly mutations: readonly StateMutation[];
  readonly outputs: readonly Output[];
  readonly fence: number;
}

const pad = (n: number): string => String(n).padStart(12, '0');

/** Parses the commit number out of an output id (`job/shard/commit/index`). */
/** The outbox text of a commit's outputs; a StateSerializationError naming one that is not JSON. */
function outputsJson(outputs: readonly Output[]): string {
  try {
    return JSON.stringify(outputs);
  } catch (error) {
    for (const o of outputs) outputValueJson(o); // throws for the first that is not JSON
    throw new StateSerializationError(
      `the outputs of a commit are not JSON-serializable (${String(error)})`,
      {
        cause: error,
      },
    );
  }
}

function commitOf(id: string): number {
  const parts = id.split('/');
  const commit = Number(parts[parts.length - 2]);
  if (!Number.isInteger(commit))
    throw new StateFormatError(`output id ${id} does not contain a commit number`);
  return commit;
}

function isConditionFailure(error: unknown): boolean {
  if (error instanceof ConditionalCheckFailedException) return true;
  if (error instanceof TransactionCanceledException) {
    return (error.CancellationReasons ?? []).some((r) => r.Code === 'ConditionalCheckFailed');
  }
  return (error as { name?: string })?.name === 'ConditionalCheckFailedException';
}

function isTransient(error: unknown): boolean {
  const name = (error as { name?: string })?.name ?? '';
  if (error instanceof TransactionCanceledException) {
    return (error.CancellationReasons ?? []).some((r) => TRANSIENT_CANCELLATION_CODES.has(r.Code ?? ''));
  }
  return isTransientAwsError(error) || /TransactionInProgress/.test(name);
}

function transient(what: string, error: unknown): TransientBackendError {
  return new TransientBackendError(
    `${what} failed transiently: ${(error as Error).message ?? String(error)}`,
    {
      cause: error,
    },
  );
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

interface ApplyCondition {
  readonly ConditionExpression: string;
  readonly ExpressionAttributeValues: Record<string, unknown>;
}

/** How applyItems / applyTransactions write: a committed delta's apply, or a restore's writes. */
interface ApplyOptions {
  readonly kind: 'delta' | 'restore';
  /** Requests in flight. */
  readonly concurrency: number;
  /** Once aborted, no further write is sent; its reason is thrown (a delta's heartbeat was fenced). */
  readonly signal?: AbortSignal;
}

/** The version restored state carries (no `d`): any later commit's condition accepts it. */
const RESTORE_SHARD = '~restore';

const applyWhat = (options: ApplyOptions): string =>
  options.kind === 'delta' ? 'applying a delta' : 'restoring state';

/** Approximate stored size of a state item (UTF-8 of its names and values) for the 4 MB limit. */
function itemBytes(item: Record<string, unknown>): number {
  let bytes = 0;
  for (const [name, value] of Object.entries(item)) {
    bytes += name.length + (typeof value === 'string' ? Buffer.byteLength(value) : 21);
  }
  return bytes;
}

export class DynamoBackend implements StateStore, CheckpointStore {
  /** A state item is its address, value and about 64 bytes of attributes (commit's size check). */
  readonly maxEntryBytes = ITEM_SOFT_LIMIT - ITEM_OVERHEAD_BYTES;
  /** A state item's partition key, `${job}#${generation}#${address}`, holds at most 2048 bytes. */
  readonly maxAddressBytes: number;
  private readonly ddb: DynamoDBDocumentClient;
  private readonly s3: S3Client;
  private readonly scope: string;
  private readonly prefix: string;
  private readonly chunkRetry: WriteChunkOptions;
  /** Outbox items committed by this object and not yet marked published: sk -> output ids. */
  private readonly outboxWritten = new Map<string, readonly string[]>();
  /**
   * Per shard, the lease this object last acquired or renewed, for the heartbeat (withHeartbeat):
   * its fence and TTL, the caller's `now` then and this object's clock() then.
   */
  private readonly held = new Map<string, { fence: number; ttlMs: number; now: number; at: number }>();
  private readonly clock: () => number;
  /**
   * Counters, for benchmarks and tests. writeRequests: commit, apply and outbox write requests
   * sent (including conditional writes that failed and cancelled transactions); itemsWritten: the
   * items those requests carried; transactions: the TransactWriteItems requests of commits and
   * delta chunks, of which applyTransactions applied delta chunks (the outbox writes of delta
   * applies are TransactWriteItems too, counted in writeRequests only); skippedNewer: delta items
   * not written because the stored item was newer (or another shard's of the same depth, which
   * then fails the commit: co-partitioning); outboxSkipped: outbox items of delta applies
   * not written because the delta was no longer pending or the item existed; deltaCommits:
   * commits that took the S3 delta path.
   */
  readonly metrics = {
    writeRequests: 0,
    itemsWritten: 0,
    readRequests: 0,
    transactions: 0,
    applyTransactions: 0,
    skippedNewer: 0,
    outboxSkipped: 0,
    deltaCommits: 0,
  };

  constructor(private readonly options: DynamoBackendOptions) {
    this.ddb = retrying(
      DynamoDBDocumentClient.from(options.dynamodb, { marshallOptions: { removeUndefinedValues: true } }),
      options.retry,
    );
    this.s3 = retrying(options.s3, options.retry);
    if (options.deltaApply !== undefined && !DELTA_APPLY_MODES.includes(options.deltaApply)) {
      throw new ConfigurationError(
        `deltaApply must be one of ${DELTA_APPLY_MODES.join(', ')}; received ${describeValue(options.deltaApply)}`,
      );
    }
    const maxActions = options.maxTransactionActions;
    if (
      maxActions !== undefined &&
      !(Number.isInteger(maxActions) && maxActions >= 1 && maxActions <= TRANSACTION_MAX_ACTIONS)
    ) {
      throw new ConfigurationError(
        `maxTransactionActions must be an integer from 1 to ${TRANSACTION_MAX_ACTIONS} (DynamoDB's limit per TransactWriteItems); received ${describeValue(maxActions)}`,
      );
    }
    this.chunkRetry = {
      ...(options.retry?.baseDelayMs !== undefined ? { baseDelayMs: options.retry.baseDelayMs } : {}),
      ...(options.retry?.sleep !== undefined ? { sleep: options.retry.sleep } : {}),
      ...(options.retry?.random !== undefined ? { random: options.retry.random } : {}),
    };
    this.clock = options.clock ?? Date.now;
    this.scope = `${options.job}#${options.generation ?? 0}`;
    this.maxAddressBytes = PARTITION_KEY_MAX_BYTES - Buffer.byteLength(`${this.scope}#`);
    this.prefix = `${options.bucketPrefix ?? ''}${options.job}/${options.generation ?? 0}/`;
  }

  // ---- StateStore ----

  /**
   * Reads state items. With `reader`, an item another shard of the reader's depth wrote (a value
   * or a tombstone) fails the read with coPartitioningError: neither shard descends from the
   * other (a split or merge child is one deeper than its parents), so the key's events reach
   * both. Items of lower depth are an ancestor's, or an unrelated shard's that this cannot tell
   * apart; items without a depth were restored from a savepoint.
   */
  async getMany(
    addresses: readonly StateAddress[],
    reader?: StateReader,
  ): Promise<Map<StateAddress, string>> {
    const out = new Map<StateAddress, string>();
    const foreign = await this.readStateItems(addresses, reader, true, (address, v) => out.set(address, v));
    if (foreign !== undefined)
      throw coPartitioningError(foreign.address, foreign.shard, reader!.shardId, 'read');
    return out;
  }

  /**
   * BatchGetItem of state items (100 per call, 8 in flight, unprocessed keys retried), calling
   * `onValue` for each value (when `values`). Returns an item another shard of `reader`'s depth
   * wrote, if any (see getMany).
   */
  private async readStateItems(
    addresses: readonly StateAddress[],
    reader: StateReader | undefined,
    values: boolean,
    onValue: (address: StateAddress, value: string) => void,
  ): Promise<{ address: StateAddress; shard: string } | undefined> {
    let foreign: { address: StateAddress; shard: string } | undefined;
    // An address too long for a partition key holds nothing (no commit can write it), and
    // DynamoDB would refuse the whole request over it.
    const unique = [...new Set(addresses)].filter((a) => Buffer.byteLength(a) <= this.maxAddressBytes);
    const chunks: string[][] = [];
    for (let i = 0; i < unique.length; i += 100) chunks.push(unique.slice(i, i + 100));
    const projection = ['pk', ...(values ? ['v'] : []), ...(reader === undefined ? [] : ['sh', 'd'])];
    await mapLimit(chunks, 8, async (chunk) => {
      let keys: Array<Record<string, unknown>> = chunk.map((a) => ({ pk: `${this.scope}#${a}` }));
      for (let attempt = 0; keys.length > 0; attempt++) {
        if (attempt > 0) await sleep(Math.min(1000, 25 * 2 ** attempt));
        this.metrics.readRequests++;
        const res = await this.ddb.send(
          new BatchGetCommand({
            RequestItems: {
              [this.options.stateTable]: {
                Keys: keys,
                ConsistentRead: true,
                ProjectionExpression: projection.join(', '),
              },
            },
          }),
        );
        for (const item of res.Responses?.[this.options.stateTable] ?? []) {
          const address = (item.pk as string).slice(this.scope.length + 1);
          if (
            reader !== undefined &&
            item.d === reader.depth &&
            typeof item.sh === 'string' &&
            item.sh !== reader.shardId &&
            !isTimerChunkAddress(address)
          ) {
            foreign ??= { address, shard: item.sh };
          }
          if (typeof item.v === 'string') onValue(address, item.v);
        }
        keys = (res.UnprocessedKeys?.[this.options.stateTable]?.Keys ?? []) as Array<Record<string, unknown>>;
        if (attempt > 12 && keys.length > 0)
          throw new TransientBackendError('BatchGetItem kept returning unprocessed keys');
      }
    });
    return foreign;
  }

  // ---- Leases ----

  async acquireLease(shardId: string, owner: string, now: number, ttlMs: number): Promise<Lease> {
    let item: LeaseItem;
    try {
      const res = await this.ddb.send(
        new UpdateCommand({
          TableName: this.options.controlTable,
          Key: this.leaseKey(shardId),
          UpdateExpression:
            'SET #owner = :owner, leaseExpiresAt = :exp, fence = if_not_exists(fence, :zero) + :one',
          ConditionExpression: 'attribute_not_exists(pk) OR leaseExpiresAt <= :now OR #owner = :owner',
          ExpressionAttributeNames: { '#owner': 'owner' },
          ExpressionAttributeValues: {
            ':owner': owner,
            ':exp': now + ttlMs,
            ':now': now,
            ':zero': 0,
            ':one': 1,
          },
          ReturnValues: 'ALL_NEW',
        }),
      );
      item = res.Attributes as LeaseItem;
    } catch (error) {
      if (isConditionFailure(error)) {
        const current = await this.readLeaseItem(shardId);
        throw new LeaseUnavailableError(
          `shard ${shardId} is leased by ${current?.owner ?? 'another owner'} until ${new Date(current?.leaseExpiresAt ?? 0).toISOString()}; retry after it expires`,
        );
      }
      throw isTransient(error) ? transient('acquiring the lease', error) : error;
    }
    const lease: Lease = { shardId, owner, fence: item.fence!, expiresAt: item.leaseExpiresAt! };
    this.hold(lease, now, ttlMs);
    const pending = item.pendingDelta;
    if (pending !== undefined) {
      await this.withHeartbeat(lease, `the redo of delta ${pending}`, (signal) =>
        this.redo(lease, pending, signal),
      );
    }
    return lease;
  }

  async renewLease(lease: Lease, now: number, ttlMs: number): Promise<Lease> {
    try {
      await this.ddb.send(
        new UpdateCommand({
          TableName: this.options.controlTable,
          Key: this.leaseKey(lease.shardId),
          UpdateExpression: 'SET leaseExpiresAt = :exp',
          ConditionExpression: 'fence = :fence',
          ExpressionAttributeValues: { ':exp': now + ttlMs, ':fence': lease.fence },
        }),
      );
    } catch (error) {
      if (isConditionFailure(error)) throw this.fenced(lease);
      throw isTransient(error) ? transient('renewing the lease', error) : error;
    }
    this.hold(lease, now, ttlMs);
    return { ...lease, expiresAt: now + ttlMs };
  }

  async releaseLease(lease: Lease): Promise<void> {
    if (this.held.get(lease.shardId)?.fence === lease.fence) this.held.delete(lease.shardId);
    try {
      await this.ddb.send(
        new UpdateCommand({
          TableName: this.options.controlTable,
          Key: this.leaseKey(lease.shardId),
          UpdateExpression: 'SET leaseExpiresAt = :zero',
          ConditionExpression: 'fence = :fence',
          ExpressionAttributeValues: { ':zero': 0, ':fence': lease.fence },
        }),
      );
    } catch (error) {
      if (!isConditionFailure(error)) throw error;
    }
  }

  /** The current lease of a shard, if any (for the coordinator: is a worker running?). */
  async leaseInfo(shardId: string): Promise<{ owner: string; expiresAt: number; fence: number } | undefined> {
    const item = await this.readLeaseItem(shardId);
    if (item?.owner === undefined) return undefined;
    return { owner: item.owner, expiresAt: item.leaseExpiresAt ?? 0, fence: item.fence ?? 0 };
  }

  // ---- Checkpoints ----

  async readCheckpoint(shardId: string): Promise<ShardCheckpoint | undefined> {
    const item = await this.readLeaseItem(shardId);
    return item === undefined ? undefined : this.checkpointOf(item);
  }

  async listCheckpoints(): Promise<ShardCheckpoint[]> {
    const out: ShardCheckpoint[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const res = await this.ddb.send(
        new QueryCommand({
          TableName: this.options.controlTable,
          KeyConditionExpression: 'pk = :pk AND begins_with(sk, :shard)',
          ExpressionAttributeValues: { ':pk': this.scope, ':shard': 'shard#' },
          ConsistentRead: true,
          ExclusiveStartKey: start,
        }),
      );
      for (const item of (res.Items ?? []) as LeaseItem[]) {
        const cp = await this.checkpointOf(item);
        if (cp !== undefined) out.push(cp);
      }
      start = res.LastEvaluatedKey;
    } while (start !== undefined);
    return out;
  }

  // ---- Commit ----

  async commit(lease: Lease, commit: Commit): Promise<void> {
    if (commit.checkpoint.shardId !== lease.shardId) {
      throw new StateFormatError(
        `a commit for shard ${commit.checkpoint.shardId} was made under the lease of shard ${lease.shardId}`,
      );
    }
    const checkpointText = serializeCheckpoint(commit.checkpoint);
    const commitNumber = commit.checkpoint.commitNumber;
    const outputsText = commit.outputs.length > 0 ? outputsJson(commit.outputs) : undefined;
    // DynamoDB's limits are in UTF-8 bytes: non-ASCII text takes more bytes than characters.
    const checkpointBytes = Buffer.byteLength(checkpointText);
    const outputsBytes = outputsText === undefined ? 0 : Buffer.byteLength(outputsText);
    const cpInline = checkpointBytes <= CHECKPOINT_INLINE_LIMIT;
    const actions = 1 + (outputsText ? 1 : 0) + commit.mutations.length;
    let bytes = (cpInline ? checkpointBytes : 0) + outputsBytes;
    let oversizedItem = outputsBytes > ITEM_SOFT_LIMIT;
    for (const m of commit.mutations) {
      if (Buffer.byteLength(m.address) > this.maxAddressBytes) {
        // Serialization-class too: the worker's checked pass dead-letters the record (maxAddressBytes).
        throw new StateSerializationError(
          `state address ${m.address.slice(0, 100)}... is ${Buffer.byteLength(m.address)} bytes; with the job and generation it is over DynamoDB's 2048-byte partition key limit (${this.maxAddressBytes} bytes left for the address). Key by something shorter (an id, or a hash of the long value).`,
        );
      }
      const size = stateEntryBytes(m.address, m.value ?? '') + ITEM_OVERHEAD_BYTES;
      bytes += size;
      if (size > ITEM_SOFT_LIMIT) {
        // Serialization-class: the worker processes the batch again and dead-letters the record
        // that grew the entry (maxEntryBytes), instead of failing this commit forever.
        throw new StateSerializationError(
          `state entry ${m.address} is ${size} bytes; DynamoDB items hold at most 400 KB. Keep per-key state smaller (TTL, timers that clean up, or aggregate instead of collecting).`,
        );
      }
    }
    if (bytes >= TRANSACTION_MAX_BYTES - 100_000) oversizedItem = true;
    const cpRef = cpInline
      ? undefined
      : await this.putCheckpointObject(lease.shardId, `${pad(commitNumber)}-${lease.fence}`, checkpointText);
    if (actions <= (this.options.maxTransactionActions ?? TRANSACTION_MAX_ACTIONS) && !oversizedItem) {
      await this.commitTransaction(lease, commit, checkpointText, cpRef, outputsText);
    } else {
      await this.withHeartbeat(lease, `commit ${commitNumber}`, (signal) =>
        this.commitDelta(lease, commit, checkpointText, cpRef, signal),
      );
    }
    if (commit.outputs.length > 0) this.rememberOutbox(lease.shardId, commitNumber, commit.outputs);
  }

  private async commitTransaction(
    lease: Lease,
    commit: Commit,
    checkpointText: string,
    cpRef: string | undefined,
    outputsText: string | undefined,
  ): Promise<void> {
    const shardId = lease.shardId;
    const commitNumber = commit.checkpoint.commitNumber;
    const items: NonNullable<TransactWriteCommandInput['TransactItems']> = [
      { Update: this.commitPointUpdate(lease, commitNumber, checkpointText, cpRef, undefined) },
    ];
    if (outputsText !== undefined) {
      items.push({
        Put: {
          TableName: this.options.controlTable,
          Item: { pk: this.scope, sk: this.outboxSk(shardId, commitNumber), outputs: outputsText },
        },
      });
    }
    const firstState = items.length;
    const depth = depthOf(commit.checkpoint);
    for (const m of commit.mutations) {
      const item = this.stateItem(m, lease, commit.checkpoint);
      items.push({
        Put: isTimerChunkAddress(m.address)
          ? { TableName: this.options.stateTable, Item: item }
          : // Co-partitioning: never over an item another shard of this depth wrote (it cannot be
            // an ancestor's or a descendant's, which differ in depth; see getMany).
            {
              TableName: this.options.stateTable,
              Item: item,
              ConditionExpression:
                'attribute_not_exists(pk) OR attribute_not_exists(d) OR d <> :d OR sh = :sh',
              ExpressionAttributeValues: { ':d': depth, ':sh': shardId },
            },
      });
    }
    await this.options.onStep?.('before-transaction');
    try {
      this.metrics.transactions++;
      this.metrics.writeRequests++;
      this.metrics.itemsWritten += items.length;
      await this.ddb.send(
        new TransactWriteCommand({
          TransactItems: items,
          // At most 36 characters, and idempotent per account for 10 minutes: a digest of the whole
          // (job, generation, shard, commit, fence), so two jobs never share one.
          ClientRequestToken: createHash('sha256')
            .update(`${this.scope}#${shardId}#${commitNumber}#${lease.fence}`)
            .digest('hex')
            .slice(0, 36),
        }),
      );
    } catch (error) {
      const failed = cancellationOf(error, items.length)?.conditionFailed;
      const foreign = failed === undefined || failed.has(0) ? undefined : Math.max(...failed) - firstState;
      if (foreign !== undefined && foreign >= 0) {
        // Only a state item's condition failed, and the commit point's held: not fenced.
        const address = commit.mutations[foreign]!.address;
        const writer = await this.readStateItems([address], { shardId, depth }, false, () => {});
        throw coPartitioningError(address, writer?.shard ?? 'another shard', shardId, 'write');
      }
      if (isConditionFailure(error)) {
        if (await this.alreadyCommitted(lease, commitNumber, checkpointText)) return; // an earlier attempt succeeded
        throw this.fenced(lease, commitNumber);
      }
      throw isTransient(error) ? transient('the commit transaction', error) : error;
    }
  }

  private async commitDelta(
    lease: Lease,
    commit: Commit,
    checkpointText: string,
    cpRef: string | undefined,
    signal: AbortSignal,
  ): Promise<void> {
    const shardId = lease.shardId;
    const commitNumber = commit.checkpoint.commitNumber;
    const key = `${this.prefix}deltas/${shardId}/${pad(commitNumber)}-${lease.fence}.json`;
    const delta: Delta = {
      checkpoint: checkpointText,
      mutations: commit.mutations,
      outputs: commit.outputs,
      fence: lease.fence,
    };
    // Exists already: an earlier attempt of this same (deterministic) commit under this lease.
    await this.putObjectIfAbsent(key, JSON.stringify(delta), 'a commit delta');
    await this.options.onStep?.('after-delta-upload');
    signal.throwIfAborted();
    try {
      this.metrics.deltaCommits++;
      this.metrics.writeRequests++;
      await this.ddb.send(
        new UpdateCommand(this.commitPointUpdate(lease, commitNumber, checkpointText, cpRef, key)),
      );
    } catch (error) {
      if (isConditionFailure(error)) {
        if (!(await this.alreadyCommitted(lease, commitNumber, checkpointText)))
          throw this.fenced(lease, commitNumber);
      } else throw isTransient(error) ? transient('the commit point update', error) : error;
    }
    await this.options.onStep?.('after-commit-point');
    if (await this.apply(lease, key, delta, commit.checkpoint, signal)) return;
    // This writer did not finish the delta under its own lease. If a newer lease holder took the
    // shard over (it redoes the delta and publishes its outputs), stop here: the commit took
    // effect, but a worker that went on would publish the outputs from memory once more.
    if ((await this.readLeaseItem(shardId))?.fence !== lease.fence) {
      throw new FencedError(
        `commit ${commitNumber} of shard ${shardId} took effect, but the lease with fence ${lease.fence} was taken over before its apply finished; the new lease holder applied it and publishes its outputs. Stop this invocation; the new lease holder resumes after this commit.`,
      );
    }
  }

  /**
   * Applies a committed delta: idempotent, version-conditioned writes, the outbox item; then
   * clears the pointer, if `lease` still holds the shard. Returns false when this writer did not
   * finish the delta under its lease: the delta was no longer pending when its outbox item was
   * due (see writeDeltaOutbox), or the pointer could not be cleared (another holder's fence, or
   * already cleared). Throws the reason of `signal` (a FencedError: see withHeartbeat) once it is
   * aborted, before its next write.
   */
  private async apply(
    lease: Lease,
    key: string,
    delta: Delta,
    checkpoint: ShardCheckpoint,
    signal: AbortSignal,
  ): Promise<boolean> {
    const commitNumber = checkpoint.commitNumber;
    const writerLease = { ...lease, fence: delta.fence };
    const items = delta.mutations.map((m) => this.stateItem(m, writerLease, checkpoint));
    // A stale writer (a zombie applying an old delta) never overwrites newer state: an item of a
    // deeper shard (a descendant: the key's newer owner), or of this shard's later commits.
    // Items without `d` (restored from a savepoint) are older than any commit. Nor does it write
    // over another shard of its depth (co-partitioning: see getMany); that is reported below.
    const depth = depthOf(checkpoint);
    const condition = {
      ConditionExpression:
        'attribute_not_exists(pk) OR attribute_not_exists(d) OR d < :d OR (d = :d AND sh = :sh AND (f < :f OR (f = :f AND c <= :c)))',
      ExpressionAttributeValues: {
        ':d': depth,
        ':sh': lease.shardId,
        ':f': delta.fence,
        ':c': commitNumber,
      },
    };
    const skipped =
      (this.options.deltaApply ?? 'items') === 'transactions'
        ? await this.applyTransactions(items, condition, { kind: 'delta', concurrency: 4, signal })
        : await this.applyItems(items, condition, { kind: 'delta', concurrency: 16, signal });
    signal.throwIfAborted();
    const pending =
      delta.outputs.length === 0 || (await this.writeDeltaOutbox(lease.shardId, key, delta, commitNumber));
    await this.options.onStep?.('after-apply');
    signal.throwIfAborted();
    try {
      await this.ddb.send(
        new UpdateCommand({
          TableName: this.options.controlTable,
          Key: this.leaseKey(lease.shardId),
          UpdateExpression: 'REMOVE pendingDelta',
          // A zombie whose lease a newer holder took must not end the delta: the new holder
          // redoes it and publishes the outputs, and the zombie learns it is fenced.
          ConditionExpression: 'pendingDelta = :key AND fence = :fence',
          ExpressionAttributeValues: { ':key': key, ':fence': lease.fence },
        }),
      );
    } catch (error) {
      if (!isConditionFailure(error)) throw error;
      return false;
    }
    // The commit is complete, but without the state of any key another shard of this depth wrote
    // (a skipped item is mostly newer state of this shard's or a descendant's): stop rather than
    // go on from a cached copy the table does not hold.
    if (skipped.length > 0) {
      const reader = { shardId: lease.shardId, depth };
      const addresses = skipped.map((pk) => pk.slice(this.scope.length + 1));
      const foreign = await this.readStateItems(addresses, reader, false, () => {});
      if (foreign !== undefined)
        throw coPartitioningError(foreign.address, foreign.shard, lease.shardId, 'write');
    }
    return pending;
  }

  /**
   * Writes the outbox item of a delta commit, only while that delta is still pending: one
   * TransactWriteItems of a ConditionCheck `pendingDelta = :key` on the lease item and the put
   * of the outbox item if absent. An outbox item is published and deleted only after its delta's
   * pointer is cleared, so a writer that finds the pointer gone (a zombie whose delta a newer
   * holder redid) could only resurrect a published item. A cancellation with a failed condition
   * (either action) writes nothing and is not an error: the item exists, or the delta is done;
   * returns false when the ConditionCheck failed. Cancellations for transient reasons only
   * (TransactionConflict, throttling) are retried with backoff, then raised as
   * TransientBackendError.
   */
  private async writeDeltaOutbox(
    shardId: string,
    key: string,
    delta: Delta,
    commitNumber: number,
  ): Promise<boolean> {
    const table = this.options.controlTable;
    const text = JSON.stringify(delta.outputs);
    const items: NonNullable<TransactWriteCommandInput['TransactItems']> = [
      {
        ConditionCheck: {
          TableName: table,
          Key: this.leaseKey(shardId),
          ConditionExpression: 'pendingDelta = :key',
          ExpressionAttributeValues: { ':key': key },
        },
      },
      {
        Put: {
          TableName: table,
          Item: {
            pk: this.scope,
            sk: this.outboxSk(shardId, commitNumber),
            ...(Buffer.byteLength(text) > ITEM_SOFT_LIMIT ? { delta: key } : { outputs: text }),
          },
          ConditionExpression: 'attribute_not_exists(pk)',
        },
      },
    ];
    const transientOnly = (error: unknown): boolean => {
      const cancellation = cancellationOf(error, items.length);
      return cancellation !== undefined && cancellation.conditionFailed.size === 0;
    };
    try {
      // The client's own retries (throttling, 5xx) happen inside; this retries what they pass through.
      await withBackoff(
        'writing the outbox item of a delta',
        () => {
          this.metrics.writeRequests++;
          return this.ddb.send(new TransactWriteCommand({ TransactItems: items }));
        },
        this.options.retry,
        transientOnly,
      );
      return true;
    } catch (error) {
      const failed = cancellationOf(error, items.length)?.conditionFailed;
      if (failed === undefined || failed.size === 0) {
        if (error instanceof TransientBackendError || !isTransient(error)) throw error;
        throw transient('writing the outbox item of a delta', error);
      }
      this.metrics.outboxSkipped++;
      return !failed.has(0);
    }
  }

  /** deltaApply 'items': one conditional PutItem per item; 'mid-apply' after half of them. */
  private async applyItems(
    items: readonly Record<string, unknown>[],
    condition: ApplyCondition,
    options: ApplyOptions,
  ): Promise<string[]> {
    let applied = 0;
    const skipped: string[] = [];
    await mapLimit(items, options.concurrency, async (item) => {
      options.signal?.throwIfAborted();
      try {
        this.metrics.writeRequests++;
        this.metrics.itemsWritten++;
        await this.ddb.send(new PutCommand({ TableName: this.options.stateTable, Item: item, ...condition }));
      } catch (error) {
        if (!isConditionFailure(error))
          throw isTransient(error) ? transient(applyWhat(options), error) : error;
        this.metrics.skippedNewer++;
        skipped.push(item.pk as string);
      }
      if (++applied === Math.ceil(items.length / 2) && options.kind === 'delta') {
        await this.options.onStep?.('mid-apply');
      }
    });
    return skipped;
  }

  /**
   * deltaApply 'transactions': chunks of at most 100 conditional puts and under 4 MB, at least
   * two chunks when there are two items or more, 4 in flight; a chunk cancelled because some of
   * its items are newer is sent again without them (./transact-chunks.ts). 'mid-apply' after
   * half of the chunks.
   */
  private async applyTransactions(
    items: readonly Record<string, unknown>[],
    condition: ApplyCondition,
    options: ApplyOptions,
  ): Promise<string[]> {
    const table = this.options.stateTable;
    const skipped: string[] = [];
    const chunks = planChunks(items, itemBytes, {
      maxActions: TRANSACTION_MAX_ACTIONS,
      maxBytes: TRANSACTION_MAX_BYTES - 100_000,
      minChunks: 2,
    });
    let applied = 0;
    await mapLimit(chunks, options.concurrency, async (chunk) => {
      try {
        const outcome = await writeChunk(
          chunk,
          (pending) => {
            options.signal?.throwIfAborted();
            this.metrics.writeRequests++;
            this.metrics.transactions++;
            if (options.kind === 'delta') this.metrics.applyTransactions++;
            this.metrics.itemsWritten += pending.length;
            return this.ddb.send(
              new TransactWriteCommand({
                TransactItems: pending.map((Item) => ({ Put: { TableName: table, Item, ...condition } })),
              }),
            );
          },
          this.chunkRetry,
        );
        this.metrics.skippedNewer += outcome.skipped;
        for (const item of outcome.skippedItems) skipped.push(item.pk as string);
      } catch (error) {
        throw isTransient(error) ? transient(applyWhat(options), error) : error;
      }
      if (++applied === Math.ceil(chunks.length / 2) && options.kind === 'delta') {
        await this.options.onStep?.('mid-apply');
      }
    });
    return skipped;
  }

  private async redo(lease: Lease, key: string, signal: AbortSignal): Promise<void> {
    const delta = JSON.parse(await this.getObject(key)) as Delta;
    await this.apply(lease, key, delta, deserializeCheckpoint(delta.checkpoint), signal);
  }

  /**
   * Runs `work` (a delta commit's upload, commit point and apply, or a redo) while keeping
   * `lease` alive. The worker renews its lease only between batches; without this, an apply longer
   * than the TTL (100,000 keys on DynamoDB) lets another invocation take the shard over and redo
   * the whole delta, which can take as long again, and so on, without progress. Every third of the
   * TTL, renewLease runs beside the work (fenced on the lease's fence; its `now` is the caller's
   * `now` at the last acquisition or renewal plus the time elapsed since, so it follows the
   * caller's clock). When the lease was taken over, `signal` is aborted with a FencedError and
   * the work stops before its next write rather than write on for nothing. A renewal that fails
   * otherwise (throttling past the retries) is left to the next one. Runs `work` without a
   * heartbeat when this object did not acquire or renew `lease` itself (no TTL known) or with
   * leaseHeartbeat false.
   */
  private async withHeartbeat<T>(
    lease: Lease,
    what: string,
    work: (signal: AbortSignal) => Promise<T>,
  ): Promise<T> {
    const controller = new AbortController();
    const held = this.held.get(lease.shardId);
    if (held?.fence !== lease.fence || this.options.leaseHeartbeat === false) return work(controller.signal);
    let beat = Promise.resolve();
    const renew = async (): Promise<void> => {
      if (controller.signal.aborted) return;
      try {
        await this.renewLease(lease, held.now + (this.clock() - held.at), held.ttlMs);
      } catch (error) {
        if (!(error instanceof FencedError)) return;
        controller.abort(
          new FencedError(
            `${what} of shard ${lease.shardId} stopped: the lease with fence ${lease.fence} was taken over meanwhile (its renewal was rejected). A commit that had passed its commit point took effect: the new lease holder applies its delta and publishes its outputs. Stop this invocation; the new lease holder resumes from the last commit.`,
            { cause: error },
          ),
        );
      }
    };
    // Node runs a timer of over 2^31 - 1 ms after 1 ms instead; a lease that long needs no heartbeat.
    const every = Math.min(held.ttlMs / 3, 2 ** 31 - 1);
    const timer = setInterval(() => {
      beat = beat.then(renew); // one renewal at a time
    }, every);
    try {
      return await work(controller.signal);
    } finally {
      clearInterval(timer);
      await beat; // no renewal outlives the work
    }
  }

  /** Records the lease this object acquired or renewed, for withHeartbeat. */
  private hold(lease: Lease, now: number, ttlMs: number): void {
    this.held.set(lease.shardId, { fence: lease.fence, ttlMs, now, at: this.clock() });
  }

  // ---- Outbox ----

  async unpublishedOutputs(shardId: string): Promise<Output[]> {
    const out: Output[] = [];
    let start: Record<string, unknown> | undefined;
    do {
      const res = await this.ddb.send(
        new QueryCommand({
          TableName: this.options.controlTable,
          KeyConditionExpression: 'pk = :pk AND begins_with(sk, :out)',
          ExpressionAttributeValues: { ':pk': this.scope, ':out': `out#${shardId}#` },
          ConsistentRead: true,
          ExclusiveStartKey: start,
        }),
      );
      for (const item of res.Items ?? []) out.push(...(await this.outboxOutputs(item)));
      start = res.LastEvaluatedKey;
    } while (start !== undefined);
    return out;
  }

  async markPublished(shardId: string, ids: readonly string[]): Promise<void> {
    const byCommit = new Map<number, Set<string>>();
    for (const id of ids) {
      const c = commitOf(id);
      const set = byCommit.get(c) ?? new Set<string>();
      set.add(id);
      byCommit.set(c, set);
    }
    for (const [commitNumber, published] of byCommit) {
      const key = { pk: this.scope, sk: this.outboxSk(shardId, commitNumber) };
      const written = this.outboxWritten.get(key.sk);
      if (written?.every((id) => published.has(id))) {
        // Every output this backend committed in that outbox item is published: whatever the item
        // holds now (all of them, or what a partial markPublished left) can go, without reading it.
        this.outboxWritten.delete(key.sk);
        await this.ddb.send(new DeleteCommand({ TableName: this.options.controlTable, Key: key }));
        continue;
      }
      const res = await this.ddb.send(
        new GetCommand({ TableName: this.options.controlTable, Key: key, ConsistentRead: true }),
      );
      if (res.Item === undefined) continue;
      const remaining = (await this.outboxOutputs(res.Item)).filter((o) => !published.has(o.id));
      if (remaining.length === 0) {
        await this.ddb.send(new DeleteCommand({ TableName: this.options.controlTable, Key: key }));
      } else {
        // What is left of a large commit's outputs can still be over an item: its S3 object is
        // named by its content, so a retry writes the same one.
        const body = await this.outboxBody(remaining, (text) => {
          const hash = createHash('sha256').update(text).digest('hex').slice(0, 16);
          return `${this.prefix}outbox/${shardId}/${pad(commitNumber)}-${hash}.json`;
        });
        await this.ddb.send(
          new PutCommand({ TableName: this.options.controlTable, Item: { ...key, ...body } }),
        );
      }
    }
  }

  /**
   * An outbox item's body for `outputs`: inline, or, over an item's size, in an S3 object at
   * `objectKey(text)` that the item points at (`delta`, as a delta commit's outbox item does).
   */
  private async outboxBody(
    outputs: readonly Output[],
    objectKey: (text: string) => string,
  ): Promise<Record<string, string>> {
    const text = JSON.stringify(outputs);
    if (Buffer.byteLength(text) <= ITEM_SOFT_LIMIT) return { outputs: text };
    const key = objectKey(text);
    await this.s3.send(
      new PutObjectCommand({
        Bucket: this.options.bucket,
        Key: key,
        Body: JSON.stringify({ outputs }),
        ContentType: 'application/json',
      }),
    );
    return { delta: key };
  }

  /**
   * Puts outputs into a shard's outbox (restoring a savepoint's undelivered outputs): one item
   * per commit, as the commits had left them (markPublished finds them by the commit number in
   * their ids); a commit's outputs too large for an item go to an S3 object it points at, as a
   * delta's do. Idempotent. With `restore` (a restore's marker, restoreMarker), each item is
   * written in a transaction with a check that the job record (`job`'s, in the control table)
   * still has that marker; returns false, having written no item since, when it has not: a
   * restore that stalled must not put back outputs the live generation already delivered.
   */
  async importOutputs(
    shardId: string,
    outputs: readonly Output[],
    restore?: { readonly job: string; readonly marker: string },
  ): Promise<boolean> {
    const byCommit = new Map<number, Output[]>();
    for (const o of outputs) {
      const c = commitOf(o.id);
      const group = byCommit.get(c);
      if (group === undefined) byCommit.set(c, [o]);
      else group.push(o);
    }
    for (const [commitNumber, group] of byCommit) {
      const body = await this.outboxBody(
        group,
        () => `${this.prefix}restored-outbox/${shardId}/${pad(commitNumber)}.json`,
      );
      const put = {
        TableName: this.options.controlTable,
        Item: { pk: this.scope, sk: this.outboxSk(shardId, commitNumber), ...body },
      };
      if (restore === undefined) await this.ddb.send(new PutCommand(put));
      else if ((await this.putWhileRestoring(put, restore, 'restoring outputs')) === 'superseded')
        return false;
    }
    return true;
  }

  // ---- helpers ----

  /**
   * Writes `put` (a control-table item of a restore) in a transaction with a check that the job
   * record still has the restore `restore.marker` in progress (its `restoring` attribute), so a
   * restore that stalled writes nothing once it was completed, superseded or abandoned.
   * 'superseded': the record no longer has it, nothing was written; 'put-condition-failed': the
   * put's own condition failed, nothing was written.
   */
  private async putWhileRestoring(
    put: {
      readonly TableName: string;
      readonly Item: Record<string, unknown>;
      readonly ConditionExpression?: string;
    },
    restore: { readonly job: string; readonly marker: string },
    what: string,
  ): Promise<'written' | 'superseded' | 'put-condition-failed'> {
    try {
      await this.ddb.send(
        new TransactWriteCommand({
          TransactItems: [
            {
              ConditionCheck: {
                TableName: this.options.controlTable,
                Key: jobRecordKey(restore.job),
                ConditionExpression: 'restoring = :marker',
                ExpressionAttributeValues: { ':marker': restore.marker },
              },
            },
            { Put: put },
          ],
        }),
      );
      return 'written';
    } catch (error) {
      const cancelled = cancellationOf(error, 2);
      if (cancelled?.conditionFailed.has(0)) return 'superseded';
      if (cancelled?.conditionFailed.has(1)) return 'put-condition-failed';
      throw isTransient(error) || cancelled?.transient ? transient(what, error) : error;
    }
  }

  /** The output ids of an outbox item this backend committed (markPublished then skips reading it). */
  private rememberOutbox(shardId: string, commitNumber: number, outputs: readonly Output[]): void {
    // Entries are dropped when published; a worker that died before publishing leaves a few.
    if (this.outboxWritten.size >= 1024) this.outboxWritten.clear();
    this.outboxWritten.set(
      this.outboxSk(shardId, commitNumber),
      outputs.map((o) => o.id),
    );
  }

  private leaseKey(shardId: string): { pk: string; sk: string } {
    return { pk: this.scope, sk: `shard#${shardId}` };
  }

  private outboxSk(shardId: string, commitNumber: number): string {
    return `out#${shardId}#${pad(commitNumber)}`;
  }

  private stateItem(m: StateMutation, lease: Lease, checkpoint: ShardCheckpoint): Record<string, unknown> {
    const version = { d: depthOf(checkpoint), sh: lease.shardId, f: lease.fence, c: checkpoint.commitNumber };
    if (m.value !== null) return { pk: `${this.scope}#${m.address}`, v: m.value, ...version };
    // Deletes are tombstones so a stale writer cannot resurrect the entry; TTL removes them.
    const ttl = Math.floor(Date.now() / 1000) + (this.options.tombstoneTtlSeconds ?? 7 * 86_400);
    return { pk: `${this.scope}#${m.address}`, ttl, ...version };
  }

  private commitPointUpdate(
    lease: Lease,
    commitNumber: number,
    checkpointText: string,
    cpRef: string | undefined,
    pendingDelta: string | undefined,
  ) {
    const sets = ['commitNumber = :c', cpRef === undefined ? 'cp = :cp' : 'cpRef = :cpRef'];
    const removes = [cpRef === undefined ? 'cpRef' : 'cp'];
    if (pendingDelta !== undefined) sets.push('pendingDelta = :delta');
    return {
      TableName: this.options.controlTable,
      Key: this.leaseKey(lease.shardId),
      UpdateExpression: `SET ${sets.join(', ')} REMOVE ${removes.join(', ')}`,
      ConditionExpression: 'fence = :fence AND (attribute_not_exists(commitNumber) OR commitNumber = :prev)',
      ExpressionAttributeValues: {
        ':fence': lease.fence,
        ':c': commitNumber,
        ':prev': commitNumber - 1,
        ...(cpRef === undefined ? { ':cp': checkpointText } : { ':cpRef': cpRef }),
        ...(pendingDelta !== undefined ? { ':delta': pendingDelta } : {}),
      },
    };
  }

  /** After a condition failure: did an earlier, ambiguous attempt of this same commit succeed? */
  private async alreadyCommitted(
    lease: Lease,
    commitNumber: number,
    checkpointText: string,
  ): Promise<boolean> {
    const item = await this.readLeaseItem(lease.shardId);
    if (item?.fence !== lease.fence || item.commitNumber !== commitNumber) return false;
    const stored = item.cp ?? (item.cpRef === undefined ? undefined : await this.getObject(item.cpRef));
    return stored === checkpointText;
  }

  private fenced(lease: Lease, commitNumber?: number): FencedError {
    return new FencedError(
      `${commitNumber === undefined ? 'lease renewal' : `commit ${commitNumber}`} of shard ${lease.shardId} was rejected: the lease with fence ${lease.fence} was taken over or another invocation committed first. Stop this invocation; the new lease holder resumes from the last commit.`,
    );
  }

  private async readLeaseItem(shardId: string): Promise<LeaseItem | undefined> {
    const res = await this.ddb.send(
      new GetCommand({
        TableName: this.options.controlTable,
        Key: this.leaseKey(shardId),
        ConsistentRead: true,
      }),
    );
    return res.Item as LeaseItem | undefined;
  }

  private async checkpointOf(item: LeaseItem): Promise<ShardCheckpoint | undefined> {
    const text = item.cp ?? (item.cpRef === undefined ? undefined : await this.getObject(item.cpRef));
    if (text === undefined) return undefined;
    const checkpoint = deserializeCheckpoint(text);
    // A shard's finishing commit counts once its delta is applied. Until then the shard is not
    // finished: the coordinator runs a worker for it (whose lease redoes the delta, then
    // publishes its outputs) rather than starting its children on state the delta lacks.
    return checkpoint.finished && item.pendingDelta !== undefined
      ? { ...checkpoint, finished: false }
      : checkpoint;
  }

  /**
   * Writes a large checkpoint's object, `name` unique per writer (commit number and fence), and
   * never over an existing one: a fenced zombie's write must not replace the checkpoint its
   * successor committed under the same commit number. An existing object with other text is a
   * StateFormatError; with the same text it is an earlier attempt of this write.
   */
  private async putCheckpointObject(shardId: string, name: string, text: string): Promise<string> {
    const key = `${this.prefix}checkpoints/${shardId}/${name}.json`;
    if (await this.putObjectIfAbsent(key, text, 'a checkpoint object')) return key;
    if ((await this.getObject(key)) !== text) {
      throw new StateFormatError(
        `checkpoint object s3://${this.options.bucket}/${key} exists with another checkpoint; it was written by another job sharing this bucket prefix, or changed by hand`,
      );
    }
    return key;
  }

  /**
   * PutObject with If-None-Match: returns false when the key exists (412). S3's 409
   * (ConditionalRequestConflict: a concurrent conditional write to the key, e.g. an SDK retry
   * racing its own first attempt) is transient: retried by the caller.
   */
  private async putObjectIfAbsent(key: string, body: string, what: string): Promise<boolean> {
    try {
      await this.s3.send(
        new PutObjectCommand({
          Bucket: this.options.bucket,
          Key: key,
          Body: body,
          ContentType: 'application/json',
          IfNoneMatch: '*',
        }),
      );
      return true;
    } catch (error) {
      const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (status === 412) return false;
      if (status === 409 || isTransient(error)) throw transient(`writing ${what}`, error);
      throw error;
    }
  }

  private async outboxOutputs(item: Record<string, unknown>): Promise<Output[]> {
    if (typeof item.outputs === 'string') return JSON.parse(item.outputs) as Output[];
    if (typeof item.delta === 'string') {
      const delta = JSON.parse(await this.getObject(item.delta)) as Delta;
      return [...delta.outputs];
    }
    return [];
  }

  private async getObject(key: string): Promise<string> {
    try {
      const res = await this.s3.send(new GetObjectCommand({ Bucket: this.options.bucket, Key: key }));
      return await res.Body!.transformToString();
    } catch (error) {
      if (error instanceof NoSuchKey || (error as { name?: string }).name === 'NoSuchKey') {
        throw new StateFormatError(
          `s3://${this.options.bucket}/${key} is missing; the commit it belongs to cannot be read. Restore the job from a savepoint.`,
        );
      }
      throw error;
    }
  }

  // ---- Savepoints (export and restore; see lib/runtime/savepoints.ts) ----

  /**
   * Every live state entry of this job generation: a parallel Scan of the state table filtered
   * by this scope's key prefix (tombstones skipped). Consistent while no worker commits (the
   * savepoint holds every lease).
   */
  async *entries(options: { segments?: number } = {}): AsyncGenerator<[StateAddress, string]> {
    const segments = Math.max(1, options.segments ?? 4);
    const prefix = `${this.scope}#`;
    const cursors: Array<Record<string, unknown> | undefined | null> = new Array(segments).fill(undefined);
    // Round-robin over the segments, one page each, so memory stays at one page per segment.
    while (cursors.some((c) => c !== null)) {
      const pages = await Promise.all(
        cursors.map(async (cursor, segment) => {
          if (cursor === null) return undefined;
          this.metrics.readRequests++;
          return this.ddb.send(
            new ScanCommand({
              TableName: this.options.stateTable,
              Segment: segment,
              TotalSegments: segments,
              FilterExpression: 'begins_with(pk, :prefix) AND attribute_exists(v)',
              ExpressionAttributeValues: { ':prefix': prefix },
              ProjectionExpression: 'pk, v',
              ConsistentRead: true,
              ...(cursor === undefined ? {} : { ExclusiveStartKey: cursor }),
            }),
          );
        }),
      );
      for (const [segment, page] of pages.entries()) {
        if (page === undefined) continue;
        cursors[segment] = page.LastEvaluatedKey ?? null;
        for (const item of page.Items ?? []) {
          if (typeof item.v === 'string') yield [(item.pk as string).slice(prefix.length), item.v];
        }
      }
    }
  }

  /**
   * Writes state entries directly (restoring a savepoint into a generation no worker runs yet),
   * with the restore version, which any later commit overwrites. Fenced by item: an entry is
   * written only over nothing or over another restored entry, never over an item a commit wrote
   * (or deleted: a tombstone). A restore that stalled after its check of the job record, while
   * a rerun completed it and the generation's workers committed, so changes nothing of theirs.
   * Conditional writes rule out BatchWriteItem: one conditional PutItem per entry, 32 in
   * flight, or with `deltaApply: 'transactions'` TransactWriteItems chunks of up to 100.
   */
  async importEntries(entries: ReadonlyArray<readonly [StateAddress, string]>): Promise<void> {
    const items = entries.map(([address, value]) => ({
      pk: `${this.scope}#${address}`,
      v: value,
      sh: RESTORE_SHARD,
      f: 0,
      c: 0,
    }));
    const condition = {
      ConditionExpression: 'attribute_not_exists(pk) OR sh = :restore',
      ExpressionAttributeValues: { ':restore': RESTORE_SHARD },
    };
    if ((this.options.deltaApply ?? 'items') === 'transactions') {
      await this.applyTransactions(items, condition, { kind: 'restore', concurrency: 8 });
    } else {
      await this.applyItems(items, condition, { kind: 'restore', concurrency: 32 });
    }
  }

  /**
   * Sets the checkpoint of a shard that has none in this generation (restoring a savepoint).
   * An identical existing checkpoint is accepted (a rerun); a different one is an error. With
   * `restore`, the item is written in a transaction with a check of the job record's restore
   * marker, as importOutputs does; returns false, having written no item, when it is not there
   * (a large checkpoint's object, named by its content, may have been written).
   */
  async importCheckpoint(
    checkpoint: ShardCheckpoint,
    restore?: { readonly job: string; readonly marker: string },
  ): Promise<boolean> {
    const text = serializeCheckpoint(checkpoint);
    const inline = Buffer.byteLength(text) <= CHECKPOINT_INLINE_LIMIT;
    const cpRef = inline
      ? undefined
      : await this.putCheckpointObject(
          checkpoint.shardId,
          // Named by content: a rerun finds its own object, another checkpoint gets its own key.
          `${pad(checkpoint.commitNumber)}-restored-${createHash('sha256').update(text).digest('hex').slice(0, 16)}`,
          text,
        );
    const put = {
      TableName: this.options.controlTable,
      Item: {
        ...this.leaseKey(checkpoint.shardId),
        leaseExpiresAt: 0, // free: the first worker takes the lease
        commitNumber: checkpoint.commitNumber,
        ...(inline ? { cp: text } : { cpRef }),
      },
      ConditionExpression: 'attribute_not_exists(pk)',
    };
    let exists: boolean;
    if (restore === undefined) {
      try {
        await this.ddb.send(new PutCommand(put));
        exists = false;
      } catch (error) {
        if (!isConditionFailure(error)) throw error;
        exists = true;
      }
    } else {
      const outcome = await this.putWhileRestoring(put, restore, 'restoring a checkpoint');
      if (outcome === 'superseded') return false;
      exists = outcome === 'put-condition-failed';
    }
    if (exists) {
      const existing = await this.readCheckpoint(checkpoint.shardId);
      if (existing === undefined || serializeCheckpoint(existing) !== text) {
        throw new StateFormatError(
          `shard ${checkpoint.shardId} already has another checkpoint in ${this.scope}; restore into a new generation or job`,
        );
      }
    }
    return true;
  }

  /**
   * Deletes every item of this job generation (an abandoned restore's, which no worker runs):
   * its state items (a Scan of the state table filtered by this scope's key prefix, as entries()
   * reads it, tombstones included), its outbox items, the objects under its bucket prefix (large
   * checkpoints and outboxes), then its lease items (checkpoints) last, so that a scope
   * interrupted halfway still has checkpoints (isEmpty is false). One DeleteItem per item, 32 in
   * flight. Returns the state items and checkpoints it deleted.
   */
  async dropScope(): Promise<{ stateEntries: number; checkpoints: number }> {
    const prefix = `${this.scope}#`;
    const deleteKeys = (table: string, keys: readonly Record<string, unknown>[]) =>
      mapLimit(keys, 32, async (Key) => {
        await this.ddb.send(new DeleteCommand({ TableName: table, Key }));
      });
    let stateEntries = 0;
    let start: Record<string, unknown> | undefined;
    do {
      const page = await this.ddb.send(
        new ScanCommand({
          TableName: this.options.stateTable,
          FilterExpression: 'begins_with(pk, :prefix)',
          ExpressionAttributeValues: { ':prefix': prefix },
          ProjectionExpression: 'pk, v',
          ConsistentRead: true,
          ...(start === undefined ? {} : { ExclusiveStartKey: start }),
        }),
      );
      const items = page.Items ?? [];
      stateEntries += items.filter((i) => i.v !== undefined).length;
      await deleteKeys(
        this.options.stateTable,
        items.map((i) => ({ pk: i.pk })),
      );
      start = page.LastEvaluatedKey;
    } while (start !== undefined);
    const control: Array<{ pk: string; sk: string }> = [];
    start = undefined;
    do {
      const page: { Items?: Record<string, unknown>[]; LastEvaluatedKey?: Record<string, unknown> } =
        await this.ddb.send(
          new QueryCommand({
            TableName: this.options.controlTable,
            KeyConditionExpression: 'pk = :pk',
            ExpressionAttributeValues: { ':pk': this.scope },
            ProjectionExpression: 'pk, sk',
            ConsistentRead: true,
            ...(start === undefined ? {} : { ExclusiveStartKey: start }),
          }),
        );
      for (const i of page.Items ?? []) control.push({ pk: i.pk as string, sk: i.sk as string });
      start = page.LastEvaluatedKey;
    } while (start !== undefined);
    const leases = control.filter((k) => k.sk.startsWith('shard#'));
    await deleteKeys(
      this.options.controlTable,
      control.filter((k) => !k.sk.startsWith('shard#')),
    );
    let token: string | undefined;
    do {
      const listed = await this.s3.send(
        new ListObjectsV2Command({
          Bucket: this.options.bucket,
          Prefix: this.prefix,
          ...(token === undefined ? {} : { ContinuationToken: token }),
        }),
      );
      await mapLimit(listed.Contents ?? [], 32, async (o) => {
        if (o.Key !== undefined)
          await this.s3.send(new DeleteObjectCommand({ Bucket: this.options.bucket, Key: o.Key }));
      });
      token = listed.IsTruncated ? listed.NextContinuationToken : undefined;
    } while (token !== undefined);
    await deleteKeys(this.options.controlTable, leases);
    return { stateEntries, checkpoints: leases.length };
  }
}

/**
 * Transient AWS errors, and DynamoDB's TransactionConflictException: a single-item write rejected
 * (not applied) because the item is part of an ongoing transaction, e.g. a lease item that a
 * delta apply's outbox write checks. The SDK retries neither the latter nor cancelled transactions.
 */
const isRetryableSend = (error: unknown): boolean =>
  isTransientAwsError(error) || (error as { name?: string })?.name === 'TransactionConflictException';

/**
 * A view of a client whose send() retries isRetryableSend errors (throttling, 5xx, network
 * errors, transaction conflicts) with backoff; condition failures and other errors pass through.
 * Retried writes are safe: every write of the protocol is conditional or idempotent, and
 * ambiguous commits are resolved by re-reading.
 */
function retrying<C extends { send: (...args: never[]) => Promise<unknown> }>(
  client: C,
  retry?: BackoffOptions,
): C {
  const view = Object.create(client) as C;
  const send = client.send.bind(client) as (...args: unknown[]) => Promise<unknown>;
  (view as { send: unknown }).send = (...args: unknown[]) =>
    withBackoff((args[0] as object).constructor.name, () => send(...args), retry, isRetryableSend);
  return view;
}

/** Runs fn over items with at most `limit` in flight; preserves nothing but completion. */
export async function mapLimit<T>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<void>,
): Promise<void> {
  let next = 0;
  const workers = Array.from({ length: Math.min(limit, items.length) }, async () => {
    while (next < items.length) {
      const item = items[next++]!;
      await fn(item);
    }
  });
  await Promise.all(workers);
}
