/**
 * In-memory StateStore + CheckpointStore: the reference adapter. Used by `floe simulate`, the
 * test driver and unit tests; it serializes to a string so a restart can drop every object.
 */
import {
  compareSequenceNumbers,
  deserializeCheckpoint,
  type ShardCheckpoint,
  serializeCheckpoint,
} from './checkpoint.ts';
import {
  FencedError,
  LeaseUnavailableError,
  StateFormatError,
  StateSerializationError,
  wholeNumberOption,
} from './errors.ts';
import {
  type CheckpointStore,
  type Commit,
  type Lease,
  type Output,
  type StateAddress,
  type StateStore,
  stateEntryBytes,
} from './ports.ts';

interface LeaseRecord {
  owner: string;
  fence: number;
  expiresAt: number;
}

export class MemoryBackend implements StateStore, CheckpointStore {
  private readonly state = new Map<StateAddress, string>();
  /** Checkpoints are kept as (immutable) objects; serialize() writes their JSON form. */
  private readonly checkpoints = new Map<string, ShardCheckpoint>();
  private readonly leases = new Map<string, LeaseRecord>();
  /** Unpublished outputs per shard, in commit order (published ones are dropped). */
  private readonly outbox = new Map<string, Output[]>();
  /** Number of getMany calls and entries read, for tests of the bulk-load behaviour. */
  readonly reads = { calls: 0, entries: 0 };
  readonly maxEntryBytes: number | undefined;

  /**
   * `maxEntryBytes`: refuse commits with a larger state entry, as a store with an item size
   * limit does (StateStore.maxEntryBytes). @default no limit
   */
  constructor(options: { readonly maxEntryBytes?: number } = {}) {
    const limit = options.maxEntryBytes;
    this.maxEntryBytes = limit === undefined ? undefined : wholeNumberOption('maxEntryBytes', limit);
  }

  async getMany(addresses: readonly StateAddress[]): Promise<Map<StateAddress, string>> {
    this.reads.calls++;
    const out = new Map<StateAddress, string>();
    for (const a of addresses) {
      const v = this.state.get(a);
      if (v !== undefined) out.set(a, v);
    }
    this.reads.entries += out.size;
    return out;
  }

  async acquireLease(shardId: string, owner: string, now: number, ttlMs: number): Promise<Lease> {
    const current = this.leases.get(shardId);
    if (current !== undefined && current.expiresAt > now && current.owner !== owner) {
      throw new LeaseUnavailableError(
        `shard ${shardId} is leased by ${current.owner} until ${new Date(current.expiresAt).toISOString()}; retry after it expires`,
      );
    }
    const record = { owner, fence: (current?.fence ?? 0) + 1, expiresAt: now + ttlMs };
    this.leases.set(shardId, record);
    return { shardId, ...record };
  }

  async renewLease(lease: Lease, now: number, ttlMs: number): Promise<Lease> {
    this.checkFence(lease);
    const record = { owner: lease.owner, fence: lease.fence, expiresAt: now + ttlMs };
    this.leases.set(lease.shardId, record);
    return { shardId: lease.shardId, ...record };
  }

  async releaseLease(lease: Lease): Promise<void> {
    const current = this.leases.get(lease.shardId);
    if (current?.fence === lease.fence) current.expiresAt = 0;
  }

  async readCheckpoint(shardId: string): Promise<ShardCheckpoint | undefined> {
    return this.checkpoints.get(shardId);
  }

  async listCheckpoints(): Promise<ShardCheckpoint[]> {
    return [...this.checkpoints.values()];
  }

  async commit(lease: Lease, commit: Commit): Promise<void> {
    // Validate everything before changing anything: the commit is all-or-nothing.
    this.checkFence(lease);
    if (commit.checkpoint.shardId !== lease.shardId) {
      throw new StateFormatError(
        `commit for shard ${commit.checkpoint.shardId} under the lease of shard ${lease.shardId}`,
      );
    }
    const prev = this.checkpoints.get(lease.shardId);
    if (prev !== undefined) {
      if (commit.checkpoint.commitNumber !== prev.commitNumber + 1) {
        throw new FencedError(
          `commit ${commit.checkpoint.commitNumber} of shard ${lease.shardId} does not follow the stored commit ${prev.commitNumber}; another invocation committed in between`,
        );
      }
      if (
        prev.position !== undefined &&
        commit.checkpoint.position !== undefined &&
        compareSequenceNumbers(commit.checkpoint.position, prev.position) < 0
      ) {
        throw new StateFormatError(`checkpoint position of shard ${lease.shardId} would move backwards`);
      }
    }
    const limit = this.maxEntryBytes;
    if (limit !== undefined) {
      for (const m of commit.mutations) {
        const bytes = m.value === null ? 0 : stateEntryBytes(m.address, m.value);
        if (bytes > limit) {
          throw new StateSerializationError(
            `state entry ${m.address} is ${bytes} bytes; this store holds at most ${limit} (maxEntryBytes)`,
          );
        }
      }
    }
    for (const m of commit.mutations) {
      if (m.value === null) this.state.delete(m.address);
      else this.state.set(m.address, m.value);
    }
    if (commit.outputs.length > 0) {
      const box = this.outbox.get(lease.shardId);
      // Outputs are immutable values: the outbox keeps the committed objects themselves.
      if (box === undefined) this.outbox.set(lease.shardId, [...commit.outputs]);
      else for (const o of commit.outputs) box.push(o);
    }
    this.checkpoints.set(lease.shardId, commit.checkpoint);
  }

  async unpublishedOutputs(shardId: string): Promise<Output[]> {
    return [...(this.outbox.get(shardId) ?? [])];
  }

  async markPublished(shardId: string, ids: readonly string[]): Promise<void> {
    const box = this.outbox.get(shardId);
    if (box === undefined || ids.length === 0) return;
    // Usual case: a worker marks the oldest outputs, in commit order. Published outputs are not
    // needed for recovery any more.
    let n = 0;
    while (n < ids.length && n < box.length && box[n]!.id === ids[n]) n++;
    if (n === ids.length) {
      if (n === box.length) this.outbox.delete(shardId);
      else box.splice(0, n);
      return;
    }
    const published = new Set(ids);
    const rest = box.filter((o) => !published.has(o.id));
    if (rest.length === 0) this.outbox.delete(shardId);
    else this.outbox.set(shardId, rest);
  }

  /** Every live state entry (for savepoints, inspection and tests). */
  entries(): Map<StateAddress, string> {
    return new Map(this.state);
  }

  /** The whole backend as one string: what survives a restart. */
  serialize(): string {
    return JSON.stringify({
      v: 1,
      state: [...this.state],
      checkpoints: [...this.checkpoints].map(([k, v]) => [k, serializeCheckpoint(v)]),
      leases: [...this.leases],
      outbox: [...this.outbox].map(([shard, box]) => [shard, box.map((o) => ({ ...o, published: false }))]),
    });
  }

  static deserialize(text: string): MemoryBackend {
    const raw = JSON.parse(text) as {
      v: number;
      state: Array<[string, string]>;
      checkpoints: Array<[string, string]>;
      leases: Array<[string, LeaseRecord]>;
      outbox: Array<[string, Array<Output & { published: boolean }>]>;
    };
    if (raw.v !== 1) throw new StateFormatError(`memory backend snapshot format ${raw.v} is not supported`);
    const backend = new MemoryBackend();
    for (const [k, v] of raw.state) backend.state.set(k, v);
    for (const [k, v] of raw.checkpoints) backend.checkpoints.set(k, deserializeCheckpoint(v));
    for (const [k, v] of raw.leases) backend.leases.set(k, v);
    for (const [k, v] of raw.outbox) {
      const box = v.filter((o) => !o.published).map(({ id, sink, value }) => ({ id, sink, value }));
      if (box.length > 0) backend.outbox.set(k, box);
    }
    return backend;
  }

  private checkFence(lease: Lease): void {
    const current = this.leases.get(lease.shardId);
    if (current === undefined || current.fence !== lease.fence) {
      throw new FencedError(
        `the lease of shard ${lease.shardId} with fence ${lease.fence} was taken over (current fence ${current?.fence ?? 'none'}); stop this invocation, the new owner resumes from the last commit`,
      );
    }
  }
}
