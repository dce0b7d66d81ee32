/**
 * A Kinesis stream (kinesis-local here) as the `HarnessStream` of the exactly-once harness
 * (lib/runtime/testing/exactly-once.ts).
 *
 * Arrival times. Kinesis stamps every record with its own ApproximateArrivalTimestamp, but the
 * harness decides arrival times (they drive idleness, and `simulate` must see the same ones). So
 * `put()` remembers the arrival time the harness asked for under the record's (shard, Kinesis
 * sequence number), and the ShardSource handed to the runtime replaces each record's
 * `arrivalTime` by it. KinesisSource positions are the Kinesis sequence number followed by a
 * 7-digit sub-index (see encodePosition/decodePosition in lib/aws/kinesis-source.ts); the
 * mapping uses `decodePosition(position).sequenceNumber`. A record the map does not know is an
 * error (every record of a fixture's stream is put through the fixture).
 *
 * Positions. The harness compares checkpoints (positions included) between runs, each on its
 * own fixture, i.e. its own stream, where Kinesis hands out different sequence numbers. So the
 * source handed to the runtime numbers each shard's records 1, 2, 3, ... in put order (the
 * `sequenceNumber` the runtime sees and checkpoints), as the memory and local-log streams do,
 * and translates an AFTER_SEQUENCE_NUMBER start back to the KinesisSource position of that
 * record. Underneath, every read is a real KinesisSource read at a real Kinesis position.
 *
 * Puts are buffered and flushed with PutRecords (500 a call, one call at a time, in put order)
 * before anything reads the stream or reshards it: the harness puts records one by one and
 * kinesis-local takes about 1 ms per PutRecord call, 1000 calls per thousand events otherwise.
 * Per-key (and per-shard) order is the put order: putRecords only reorders records it retries
 * after a partial failure, which kinesis-local never produces.
 */
import {
  type KinesisClient,
  ListShardsCommand,
  MergeShardsCommand,
  SplitShardCommand,
} from '@aws-sdk/client-kinesis';
import { decodePosition, encodePosition, KinesisSource, putRecords } from '../../lib/aws/kinesis-source.ts';
import type {
  ReadResult,
  ShardInfo,
  ShardReader,
  ShardSource,
  SourceRecord,
  StartPosition,
} from '../../lib/core/index.ts';
import type { HarnessStream } from '../../lib/runtime/testing/exactly-once.ts';
import { eventually } from '../env/eventually.ts';
import { waitStreamActive } from '../env/kinesis-streams.ts';

interface PendingPut {
  readonly partitionKey: string;
  readonly data: Uint8Array;
  readonly arrivalTime: number;
}

export interface KinesisHarnessStreamOptions {
  readonly kinesis: KinesisClient;
  readonly stream: string;
  /** Records per PutRecords call. @default 500 */
  readonly putBatch?: number;
}

/** See the file comment. */
export class KinesisHarnessStream implements HarnessStream {
  readonly source: ShardSource;
  readonly kinesisSource: KinesisSource;
  /** `${shardId}/${kinesisSequenceNumber}` -> the record's ordinal in its shard and the arrival time the harness gave. */
  private readonly known = new Map<string, { ordinal: number; arrival: number }>();
  /** Per shard: the KinesisSource position of record n at index n - 1. */
  private readonly positions = new Map<string, string[]>();
  private pending: PendingPut[] = [];
  private flushing: Promise<void> = Promise.resolve();

  constructor(private readonly options: KinesisHarnessStreamOptions) {
    this.kinesisSource = new KinesisSource({
      client: options.kinesis,
      stream: options.stream,
      retry: { baseDelayMs: 2, maxDelayMs: 50 },
    });
    const inner = this.kinesisSource;
    this.source = {
      listShards: async () => {
        await this.flush();
        return inner.listShards();
      },
      openReader: async (shardId: string, position: StartPosition): Promise<ShardReader> => {
        await this.flush();
        const reader = await inner.openReader(shardId, this.kinesisStart(shardId, position));
        const wrapped: ShardReader = {
          read: async (limit: number): Promise<ReadResult> => {
            await this.flush();
            const result = await reader.read(limit);
            return { ...result, records: result.records.map((r) => this.withArrival(shardId, r)) };
          },
          close: () => reader.close(),
        };
        return wrapped;
      },
    };
  }

  get stream(): string {
    return this.options.stream;
  }

  put(partitionKey: string, data: Uint8Array, arrivalTime: number): void {
    this.pending.push({ partitionKey, data, arrivalTime });
  }

  /** Sends every buffered record (serialized: concurrent callers wait for the same flush). */
  flush(): Promise<void> {
    this.flushing = this.flushing.then(async () => {
      while (this.pending.length > 0) {
        const batch = this.pending.splice(0, this.options.putBatch ?? 500);
        const outcomes = await putRecords(
          this.options.kinesis,
          this.options.stream,
          batch.map((p) => ({ partitionKey: p.partitionKey, data: p.data })),
          { baseDelayMs: 2, maxDelayMs: 50 },
        );
        outcomes.forEach((o, i) => {
          let list = this.positions.get(o.shardId);
          if (list === undefined) {
            list = [];
            this.positions.set(o.shardId, list);
          }
          list.push(encodePosition(o.sequenceNumber, 'last'));
          this.known.set(`${o.shardId}/${o.sequenceNumber}`, {
            ordinal: list.length,
            arrival: batch[i]!.arrivalTime,
          });
        });
      }
    });
    return this.flushing;
  }

  private withArrival(shardId: string, record: SourceRecord): SourceRecord {
    const { sequenceNumber } = decodePosition(record.sequenceNumber);
    const known = this.known.get(`${shardId}/${sequenceNumber}`);
    if (known === undefined) {
      throw new Error(
        `internal (test): record ${record.sequenceNumber} of ${this.options.stream}/${shardId} was not put through the harness stream`,
      );
    }
    return { ...record, sequenceNumber: String(known.ordinal), arrivalTime: known.arrival };
  }

  /** A start position in ordinals -> the KinesisSource position of that record. */
  private kinesisStart(shardId: string, position: StartPosition): StartPosition {
    if (position.type !== 'AFTER_SEQUENCE_NUMBER') return position;
    const ordinal = Number(position.sequenceNumber);
    const kinesisPosition = this.positions.get(shardId)?.[ordinal - 1];
    if (!Number.isInteger(ordinal) || kinesisPosition === undefined) {
      throw new Error(
        `internal (test): ${this.options.stream}/${shardId} has no record number ${position.sequenceNumber}`,
      );
    }
    return { type: 'AFTER_SEQUENCE_NUMBER', sequenceNumber: kinesisPosition };
  }

  private async rawShards(): Promise<ShardInfo[]> {
    return this.kinesisSource.listShards();
  }

  async split(shardId: string): Promise<string[]> {
    await this.flush();
    const parent = (await this.rawShards()).find((s) => s.shardId === shardId);
    if (parent === undefined) throw new Error(`no shard ${shardId}`);
    const start = BigInt(parent.hashKeyRange.start);
    const end = BigInt(parent.hashKeyRange.end);
    const mid = (start + end) / 2n; // lower child [start, mid], upper [mid + 1, end], as MemoryStream
    await this.options.kinesis.send(
      new SplitShardCommand({
        StreamName: this.options.stream,
        ShardToSplit: shardId,
        NewStartingHashKey: (mid + 1n).toString(),
      }),
    );
    await waitStreamActive(this.options.kinesis, this.options.stream);
    const children = await eventually(`children of ${shardId}`, async () => {
      const list = (await this.rawShards()).filter((s) => s.parentShardIds[0] === shardId);
      return list.length === 2 ? list : undefined;
    });
    return children
      .sort((a, b) => (BigInt(a.hashKeyRange.start) < BigInt(b.hashKeyRange.start) ? -1 : 1))
      .map((s) => s.shardId);
  }

  async merge(shardA: string, shardB: string): Promise<string> {
    await this.flush();
    await this.options.kinesis.send(
      new MergeShardsCommand({
        StreamName: this.options.stream,
        ShardToMerge: shardA,
        AdjacentShardToMerge: shardB,
      }),
    );
    await waitStreamActive(this.options.kinesis, this.options.stream);
    const child = await eventually(`child of ${shardA}+${shardB}`, async () => {
      const out = await this.options.kinesis.send(new ListShardsCommand({ StreamName: this.options.stream }));
      return out.Shards?.find(
        (s) =>
          (s.ParentShardId === shardA && s.AdjacentParentShardId === shardB) ||
          (s.ParentShardId === shardB && s.AdjacentParentShardId === shardA),
      )?.ShardId;
    });
    return child;
  }
}
