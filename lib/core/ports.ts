/**
 * The ports between the engine and the outside world. Adapters (memory, SQLite, DynamoDB+S3)
 * implement them; every adapter runs the same contract test suite.
 */
import type { ShardCheckpoint } from './checkpoint.ts';
import { ConfigurationError } from './errors.ts';

/** One record of a shard, as a Kinesis GetRecords call or the local log returns it. */
export interface SourceRecord {
  /** Raw payload: bytes from Kinesis or the local log, or an already-decoded value in tests. */
  readonly data: unknown;
  readonly partitionKey: string;
  /** Position in the shard; sequence numbers compare as decimal integers. */
  readonly sequenceNumber: string;
  /** Approximate arrival time (epoch ms), used as processing time and default element time. */
  readonly arrivalTime: number;
}

/** An element emitted to a named sink. The id is stable across retries of the same commit. */
export interface Output {
  /** `${job}/${shard}/${commitNumber}/${index}`: unique and identical on every retry. */
  readonly id: string;
  readonly sink: string;
  readonly value: unknown;
}

/** Address of a keyed state entry: `${operatorUid}/${JSON key}`. Not scoped by shard. */
export type StateAddress = string;

/** A state write produced by a batch: a serialized value, or null to delete. */
export interface StateMutation {
  readonly address: StateAddress;
  readonly value: string | null;
}

/** The shard task reading keyed state (StateStore.getMany). */
export interface StateReader {
  readonly shardId: string;
  /** The shard's lineage depth (ShardCheckpoint.depth). */
  readonly depth: number;
}

/** Bulk, read-only access to the committed keyed state of one job generation. */
export interface StateStore {
  /**
   * Reads many entries at once. Entries that do not exist are absent from the result.
   *
   * A store that records which shard wrote each entry, and at which lineage depth, checks
   * co-partitioning with `reader`: an entry (or a delete of one) that another shard of the
   * reader's depth wrote cannot be the reader's, since neither shard descends from the other,
   * so the key's events reach two shards (docs/dsl.md, "Keys and shards"). Such a read throws a
   * ConfigurationError (coPartitioningError) rather than let each shard count its own copy.
   */
  getMany(addresses: readonly StateAddress[], reader?: StateReader): Promise<Map<StateAddress, string>>;
  /**
   * The largest entry the store holds: UTF-8 bytes of its address and serialized value. A commit
   * with a larger one fails with a StateSerializationError, and the worker then dead-letters the
   * record that grew it (ShardTaskOptions.checked). @default no limit
   */
  readonly maxEntryBytes?: number;
  /**
   * The longest address the store holds, in UTF-8 bytes (DynamoDB: a partition key holds at most
   * 2 KB). An entry at a longer address cannot exist: a commit that writes one fails with a
   * StateSerializationError, and the worker then dead-letters the record that wrote it, as for
   * maxEntryBytes. @default no limit
   */
  readonly maxAddressBytes?: number;
}

/**
 * The error for a keyed state entry that two shards write, neither descending from the other:
 * the pipeline's keyBy does not follow the stream's partition key.
 */
export function coPartitioningError(
  address: StateAddress,
  previous: string,
  shardId: string,
  when: 'read' | 'write',
): ConfigurationError {
  const now =
    when === 'write' ? `now by shard ${shardId}` : `is now read by shard ${shardId} for events of its key`;
  return new ConfigurationError(
    `keyed state entry ${address} was written by shard ${previous} and ${now}, and neither shard descends from the other: the pipeline's keyBy does not follow the stream's partition key, so each shard holds its own copy of the key's state and the results are not exact. Partition the stream by the key the pipeline keys by (e.g. \`floe produce --partition-key <field>\`), or key by the partition key; see docs/dsl.md#keys-and-shards.`,
  );
}

/** An entry's size as StateStore.maxEntryBytes counts it: UTF-8 bytes of address and value. */
export function stateEntryBytes(address: StateAddress, value: string): number {
  return Buffer.byteLength(address) + Buffer.byteLength(value);
}

/** A lease on one shard. The fence increases on every acquisition. */
export interface Lease {
  readonly shardId: string;
  readonly owner: string;
  readonly fence: number;
  readonly expiresAt: number;
}

/** Everything one batch changes. Committed atomically, conditional on the lease's fence. */
export interface Commit {
  readonly checkpoint: ShardCheckpoint;
  readonly mutations: readonly StateMutation[];
  readonly outputs: readonly Output[];
}

/**
 * Leases, checkpoints, the atomic commit and the outbox of one job generation.
 * Invariants: a commit is all-or-nothing; only the holder of the newest fence can commit.
 */
export interface CheckpointStore {
  /** Takes the lease if it is free or expired at `now`; throws LeaseUnavailableError otherwise. */
  acquireLease(shardId: string, owner: string, now: number, ttlMs: number): Promise<Lease>;
  /** Extends a lease we hold; throws FencedError if it was taken over. */
  renewLease(lease: Lease, now: number, ttlMs: number): Promise<Lease>;
  /** Gives the lease up (expires it now) if we still hold it. */
  releaseLease(lease: Lease): Promise<void>;
  readCheckpoint(shardId: string): Promise<ShardCheckpoint | undefined>;
  listCheckpoints(): Promise<ShardCheckpoint[]>;
  /** Atomically applies state mutations, stores outputs in the outbox and the checkpoint. */
  commit(lease: Lease, commit: Commit): Promise<void>;
  /** Outputs committed but not yet marked published, in commit order. */
  unpublishedOutputs(shardId: string): Promise<Output[]>;
  markPublished(shardId: string, ids: readonly string[]): Promise<void>;
}

/** What a publish knows of the shard whose commits made the outputs (all of one shard). */
export interface PublishContext {
  /**
   * The shard's lineage depth (ShardCheckpoint.depth): a sink that orders writes across shards
   * (the DynamoDB upsert sink) ranks a reshard child's outputs above its parents'.
   */
  readonly depth: number;
}

/** Publishes committed outputs. Must be idempotent by output id. */
export interface Sink {
  /** `context`: given by the worker for every publish (a sink may ignore it). */
  publish(outputs: readonly Output[], context?: PublishContext): Promise<void>;
}

/** A shard of the source stream, with its lineage (Kinesis resharding). */
export interface ShardInfo {
  readonly shardId: string;
  /** Parent (split) or parents (merge); children start after their parents are finished. */
  readonly parentShardIds: readonly string[];
  /** Inclusive hash-key range as decimal strings. */
  readonly hashKeyRange: { readonly start: string; readonly end: string };
  /** True when the shard is closed for writes (after a reshard); it still has records. */
  readonly closed: boolean;
}

/** Where a reader starts. A new job uses the job's configured start; later, the checkpoint. */
export type StartPosition =
  | { readonly type: 'TRIM_HORIZON' }
  | { readonly type: 'LATEST' }
  | { readonly type: 'AT_TIMESTAMP'; readonly timestamp: number }
  | { readonly type: 'AFTER_SEQUENCE_NUMBER'; readonly sequenceNumber: string };

export interface ReadResult {
  readonly records: readonly SourceRecord[];
  /** How far the reader is behind the shard's newest record (0 = caught up). */
  readonly millisBehindLatest: number;
  /** The shard is closed and every record was returned: no further reads. */
  readonly shardEnded: boolean;
  /** Set with shardEnded: the shards that continue this one. */
  readonly childShardIds?: readonly string[];
}

export interface ReadOptions {
  /**
   * Time left before the caller's budget ends (ms): a read that would wait past it (throttling
   * retries) returns no records instead, not caught up. Readers that never wait ignore it.
   */
  readonly timeLeftMs?: number;
}

export interface ShardReader {
  /** Reads up to `limit` records from the current position; empty when caught up. */
  read(limit: number, options?: ReadOptions): Promise<ReadResult>;
  close?(): Promise<void>;
}

/** The source stream: lists shards and opens readers. */
export interface ShardSource {
  listShards(): Promise<ShardInfo[]>;
  openReader(shardId: string, position: StartPosition): Promise<ShardReader>;
}
