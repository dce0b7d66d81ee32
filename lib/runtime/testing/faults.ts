/**
 * Fault injection for the runtime's ports: wrappers around a StateStore + CheckpointStore, a
 * ShardSource and a Sink that crash (throw `InjectedCrash`) or pause at named protocol steps.
 *
 * A fault is "act at the Nth occurrence of step X", counted over the injector's whole life
 * (across restarts), so a schedule is deterministic for a deterministic backend and stream.
 * A crash kills the current "process": from then on every call through any wrapper of the same
 * injector throws `InjectedCrash` too, until `revive()` starts the next incarnation. This is
 * how a crash of one shard worker also stops its siblings running in the same runJob.
 *
 * Adapters add their own steps (e.g. DynamoDB "mid state write", "after S3 delta") by calling
 * `injector.hook(point, detail)` (a `FaultHook`) from inside their implementation; the
 * injector treats those points like the built-in ones.
 */

import type {
  CheckpointStore,
  Commit,
  Lease,
  Output,
  PublishContext,
  ReadResult,
  ShardReader,
  ShardSource,
  Sink,
  StartPosition,
  StateAddress,
  StateReader,
  StateStore,
} from '../../core/index.ts';
import { seededRandom } from '../../core/index.ts';

/** The built-in protocol steps where the wrappers can inject a fault. */
export const FAULT_POINTS = {
  /** Inside StateStore.getMany: the read ran, the caller never sees its result. */
  getMany: 'state.getMany',
  /** After acquireLease returned: the lease is held by a process that is gone. */
  acquireLeaseAfter: 'checkpoint.acquireLease.after',
  /** Before CheckpointStore.commit: the batch was read and processed, nothing is committed. */
  commitBefore: 'checkpoint.commit.before',
  /** After commit returned, before the outputs are published. */
  commitAfter: 'checkpoint.commit.after',
  /** After the outputs were published, before they are marked published. */
  markPublishedBefore: 'checkpoint.markPublished.before',
  /** After ShardReader.read returned records. */
  readAfter: 'source.read.after',
  /** Inside Sink.publish: the first half of the outputs is published, then the crash. */
  publishMid: 'sink.publish.mid',
} as const;

export type BuiltinFaultPoint = (typeof FAULT_POINTS)[keyof typeof FAULT_POINTS];

/** Every built-in fault point, in protocol order. */
export const BUILTIN_FAULT_POINTS: readonly BuiltinFaultPoint[] = [
  FAULT_POINTS.acquireLeaseAfter,
  FAULT_POINTS.readAfter,
  FAULT_POINTS.getMany,
  FAULT_POINTS.commitBefore,
  FAULT_POINTS.commitAfter,
  FAULT_POINTS.publishMid,
  FAULT_POINTS.markPublishedBefore,
];

/** One occurrence of a fault point. */
export interface FaultHit {
  readonly point: string;
  /** 1-based, counted over the injector's life (only occurrences passing the rule's `match`). */
  readonly occurrence: number;
  /** What the step works on: `{ shardId, lease, commit }`, `{ shardId, result }`, `{ outputs }`... */
  readonly detail: unknown;
}

/** The error thrown by an injected crash (and by every call of a crashed incarnation). */
export class InjectedCrash extends Error {
  constructor(
    readonly point: string,
    readonly occurrence: number,
  ) {
    super(`injected crash at ${point} (occurrence ${occurrence})`);
    this.name = 'InjectedCrash';
  }
}

export function isInjectedCrash(error: unknown): error is InjectedCrash {
  return error instanceof InjectedCrash;
}

export type FaultAction = 'crash' | ((hit: FaultHit) => void | Promise<void>);

export interface FaultRule {
  /** The step (a built-in point or an adapter's own), several steps, or '*' for every step. */
  readonly point: string | readonly string[];
  /** Occurrences (1-based) to act at: one, a list, or a predicate. */
  readonly at: number | readonly number[] | ((occurrence: number, hit: FaultHit) => boolean);
  /** Only occurrences whose detail matches are counted (e.g. only commits that finish a shard). */
  readonly match?: (detail: unknown) => boolean;
  /** @default 'crash'. A function runs instead (e.g. to pause on a gate); it may throw. */
  readonly action?: FaultAction;
  /** Act at most this many times. */
  readonly limit?: number;
}

/** Called by adapters at their own fault points. Throws InjectedCrash when a crash is due. */
export type FaultHook = (point: string, detail?: unknown) => Promise<void>;

const tick = (): Promise<void> => new Promise((resolve) => setImmediate(resolve));

export class FaultInjector {
  /** Every crash injected so far, in order. */
  readonly crashes: FaultHit[] = [];
  private readonly counts = new Map<string, number>();
  private readonly matched = new Map<string, number>();
  private readonly fired = new Map<FaultRule, number>();
  private deadAt: InjectedCrash | undefined;
  private inflight = 0;
  private readonly rules: FaultRule[];

  constructor(rules: readonly FaultRule[] = []) {
    this.rules = [...rules];
  }

  /** Adds a rule (e.g. a pause) to a running injector. */
  add(rule: FaultRule): void {
    this.rules.push(rule);
  }

  /** True after a crash, until `revive()`. */
  get dead(): boolean {
    return this.deadAt !== undefined;
  }

  /** Occurrences of a point so far. */
  count(point: string): number {
    return this.counts.get(point) ?? 0;
  }

  /** Starts the next incarnation: calls work again; occurrence counts continue. */
  revive(): void {
    this.deadAt = undefined;
  }

  /** The adapter hook: counts an occurrence of `point` and acts on it. */
  readonly hook: FaultHook = (point, detail) => this.at(point, detail);

  /** Counts an occurrence of `point` and performs the action due, if any. */
  async at(point: string, detail?: unknown): Promise<void> {
    this.guard();
    const due = this.take(point, detail);
    if (due === undefined) return;
    if (due.action === 'crash') this.crash(due.hit);
    await due.action(due.hit);
    this.guard();
  }

  /**
   * Counts an occurrence of `point` and returns the action due, without performing it (for
   * wrappers that do part of the step first, like a half-done publish).
   */
  take(point: string, detail?: unknown): { hit: FaultHit; action: FaultAction } | undefined {
    const n = (this.counts.get(point) ?? 0) + 1;
    this.counts.set(point, n);
    let result: { hit: FaultHit; action: FaultAction } | undefined;
    this.rules.forEach((rule, index) => {
      if (!appliesTo(rule, point)) return;
      let occurrence = n;
      if (rule.match !== undefined) {
        // A filtered rule counts only the occurrences it matches.
        if (!rule.match(detail)) return;
        const key = `${index}\u0000${point}`;
        occurrence = (this.matched.get(key) ?? 0) + 1;
        this.matched.set(key, occurrence);
      }
      if (result !== undefined) return;
      if ((this.fired.get(rule) ?? 0) >= (rule.limit ?? Number.POSITIVE_INFINITY)) return;
      const hit: FaultHit = { point, occurrence, detail };
      if (!occurs(rule.at, occurrence, hit)) return;
      this.fired.set(rule, (this.fired.get(rule) ?? 0) + 1);
      result = { hit, action: rule.action ?? 'crash' };
    });
    return result;
  }

  /** Kills the current incarnation at `hit` and throws. */
  crash(hit: FaultHit): never {
    const error = new InjectedCrash(hit.point, hit.occurrence);
    this.crashes.push(hit);
    this.deadAt = error;
    throw error;
  }

  /** Throws if the current incarnation crashed. */
  guard(): void {
    if (this.deadAt !== undefined) throw new InjectedCrash(this.deadAt.point, this.deadAt.occurrence);
  }

  /** Runs one port call: refused after a crash, and its result is lost if a crash happened meanwhile. */
  async call<T>(fn: () => Promise<T>): Promise<T> {
    this.guard();
    this.inflight++;
    try {
      const result = await fn();
      this.guard();
      return result;
    } finally {
      this.inflight--;
    }
  }

  /** Waits until no call of a crashed incarnation is still running (before a restart). */
  async quiesce(): Promise<void> {
    let quiet = 0;
    for (let i = 0; i < 10_000 && quiet < 3; i++) {
      await tick();
      quiet = this.inflight === 0 ? quiet + 1 : 0;
    }
  }
}

function appliesTo(rule: FaultRule, point: string): boolean {
  if (typeof rule.point === 'string') return rule.point === '*' || rule.point === point;
  return rule.point.includes(point);
}

function occurs(at: FaultRule['at'], occurrence: number, hit: FaultHit): boolean {
  if (typeof at === 'number') return at === occurrence;
  if (typeof at === 'function') return at(occurrence, hit);
  return at.includes(occurrence);
}

/** Occurrences 1, 2, 4, 7, 11, 16, ...: early ones (first batch, first lease) then spread out. */
export function spreadOccurrences(count: number): number[] {
  const out: number[] = [];
  for (let i = 0, n = 1; i < count; i++) {
    out.push(n);
    n += i + 1;
  }
  return out;
}

/** A deterministic pseudo-random predicate for `FaultRule.at`. */
export function randomOccurrences(seed: number, probability: number): () => boolean {
  const random = seededRandom(seed);
  return () => random() < probability;
}

/** A StateStore + CheckpointStore whose steps go through the injector. */
export function faultyBackend(
  backend: StateStore & CheckpointStore,
  injector: FaultInjector,
): StateStore & CheckpointStore {
  return {
    ...(backend.maxEntryBytes === undefined ? {} : { maxEntryBytes: backend.maxEntryBytes }),
    ...(backend.maxAddressBytes === undefined ? {} : { maxAddressBytes: backend.maxAddressBytes }),
    getMany: (addresses: readonly StateAddress[], reader?: StateReader) =>
      injector.call(async () => {
        const result = await backend.getMany(addresses, reader);
        await injector.at(FAULT_POINTS.getMany, { addresses });
        return result;
      }),
    acquireLease: (shardId: string, owner: string, now: number, ttlMs: number) =>
      injector.call(async () => {
        const lease = await backend.acquireLease(shardId, owner, now, ttlMs);
        await injector.at(FAULT_POINTS.acquireLeaseAfter, { shardId, lease });
        return lease;
      }),
    renewLease: (lease: Lease, now: number, ttlMs: number) =>
      injector.call(() => backend.renewLease(lease, now, ttlMs)),
    releaseLease: (lease: Lease) => injector.call(() => backend.releaseLease(lease)),
    readCheckpoint: (shardId: string) => injector.call(() => backend.readCheckpoint(shardId)),
    listCheckpoints: () => injector.call(() => backend.listCheckpoints()),
    commit: (lease: Lease, commit: Commit) =>
      injector.call(async () => {
        const detail = { shardId: lease.shardId, lease, commit };
        await injector.at(FAULT_POINTS.commitBefore, detail);
        await backend.commit(lease, commit);
        await injector.at(FAULT_POINTS.commitAfter, detail);
      }),
    unpublishedOutputs: (shardId: string) => injector.call(() => backend.unpublishedOutputs(shardId)),
    markPublished: (shardId: string, ids: readonly string[]) =>
      injector.call(async () => {
        await injector.at(FAULT_POINTS.markPublishedBefore, { shardId, ids });
        await backend.markPublished(shardId, ids);
      }),
  };
}

/** A ShardSource whose reads go through the injector. */
export function faultySource(source: ShardSource, injector: FaultInjector): ShardSource {
  return {
    listShards: () => injector.call(() => source.listShards()),
    openReader: (shardId: string, position: StartPosition) =>
      injector.call(async () => {
        const reader = await source.openReader(shardId, position);
        const wrapped: ShardReader = {
          read: (limit: number) =>
            injector.call(async (): Promise<ReadResult> => {
              const result = await reader.read(limit);
              await injector.at(FAULT_POINTS.readAfter, { shardId, result });
              return result;
            }),
        };
        // Closing is cleanup: it runs even in a crashed incarnation (a dead process's sockets close).
        if (reader.close !== undefined) wrapped.close = () => reader.close!();
        return wrapped;
      }),
  };
}

/** A Sink whose publish can crash halfway: the first half of the outputs is published, then the crash. */
export function faultySink(sink: Sink, injector: FaultInjector): Sink {
  return {
    publish: (outputs: readonly Output[], context?: PublishContext) =>
      injector.call(async () => {
        const due = injector.take(FAULT_POINTS.publishMid, { outputs });
        if (due !== undefined) {
          if (due.action === 'crash') {
            await sink.publish(outputs.slice(0, Math.floor(outputs.length / 2)), context);
            injector.crash(due.hit);
          }
          await due.action(due.hit);
          injector.guard();
        }
        await sink.publish(outputs, context);
      }),
  };
}

/** A gate for pause actions: `rule.action = gate.pause`, then `await gate.reached`, `gate.open()`. */
export class Gate {
  private release!: () => void;
  private arrived!: (hit: FaultHit) => void;
  readonly reached: Promise<FaultHit>;
  private readonly opened: Promise<void>;

  constructor() {
    this.reached = new Promise((resolve) => {
      this.arrived = resolve;
    });
    this.opened = new Promise((resolve) => {
      this.release = resolve;
    });
  }

  readonly pause = async (hit: FaultHit): Promise<void> => {
    this.arrived(hit);
    await this.opened;
  };

  open(): void {
    this.release();
  }
}
