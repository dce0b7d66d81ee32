/**
 * Savepoints and replay over any backend (embedded SQLite + local log + directory, or DynamoDB +
 * Kinesis + S3), through the ports below.
 *
 * Taking a savepoint (a consistent cut of a job generation):
 *   1. the job record is set to `pausing` with a savepoint marker (id, owner, expiry the
 *      savepoint keeps renewing); workers see it between batches, stop at a commit boundary
 *      and release their leases;
 *   2. the savepoint takes the lease of every shard (fencing out any straggler: its next commit
 *      fails), so nothing can commit while it reads;
 *   3. it reads every checkpoint, then writes the state as gzip NDJSON files with sha256
 *      checksums, renewing the marker and the leases as it goes;
 *   4. it checks it still holds every lease (else the cut may be inconsistent: it fails),
 *      writes the manifest LAST, then resumes the job (or, with stop, leaves it `stopped`) and
 *      releases the leases.
 * A crash leaves files without a manifest (an incomplete savepoint) and an expired marker, so
 * workers resume by themselves; rerunning the command reuses the id and starts the export over.
 *
 * Restoring (replay): verify the manifest and every file's checksum, check the state layout
 * against the new pipeline (or run the migration over every entry and timer, checking what it
 * returns), check that the records after each saved position are still in the stream — all
 * before writing anything — then write the state (running the migration again) and
 * checkpoints into a fresh generation (of the same job, or of a new job id), and finally switch
 * the job record to it (the completion marker). A crash before the switch leaves the old
 * generation current; rerunning the same replay continues into the same generation with
 * idempotent writes.
 */
import {
  asStateMigration,
  CHECKPOINT_FORMAT,
  type CheckpointStore,
  type CompatibilityIssue,
  ConfigurationError,
  checkCompatibility,
  checkMigratedTimer,
  checkpointJson,
  checkSavepointId,
  decodeOutboxFile,
  decodeSavedEntry,
  decodeStateFile,
  describeValue,
  encodeMigratedEntry,
  encodeOutboxFile,
  encodeStateFile,
  errorMessage,
  FencedError,
  isTimerChunkAddress,
  type Lease,
  LeaseUnavailableError,
  MANIFEST_FILE,
  manifestCheckpoints,
  newSavepointId,
  type OperatorSchema,
  type Output,
  operatorOfAddress,
  operatorSchemas,
  outboxFileName,
  type PipelinePlan,
  parseManifest,
  SAVEPOINT_FORMAT,
  type SavedStateEntry,
  type SavepointFile,
  type SavepointManifest,
  type SavepointPipeline,
  type SavepointShard,
  type ShardCheckpoint,
  type ShardSource,
  type SnapshotStore,
  STATE_FORMAT_VERSION,
  type StartPosition,
  type StateAddress,
  StateFormatError,
  type StateMigration,
  type StateStore,
  sealManifest,
  serializeCheckpoint,
  serializeManifest,
  stateFileName,
  TerminalError,
  withInlineTimers,
} from '../core/index.ts';
import {
  firstGeneration,
  type JobRecord,
  JobRecordConflictError,
  type JobStore,
  unfinishedAbandon,
  updateJob,
} from './job-control.ts';

// ---- ports --------------------------------------------------------------------------------------

/**
 * The restore a write belongs to. Its writes may land only while the job record still names it
 * (`restore` of the record): once a rerun completed it or another replay superseded it, the
 * generation may be live.
 */
export interface RestoreGuard {
  readonly job: string;
  readonly savepointId: string;
  readonly generation: number;
}

/** Whether `record` still names the restore `guard` describes. */
export function namesRestore(record: JobRecord | undefined, guard: RestoreGuard): boolean {
  return record?.restore?.savepointId === guard.savepointId && record.restore.generation === guard.generation;
}

/** What a restore whose job record no longer names it throws, before it writes anything more. */
export function supersededRestore(guard: RestoreGuard): ConfigurationError {
  return new ConfigurationError(
    `the restore of savepoint ${guard.savepointId} into job ${guard.job} (generation ${guard.generation}) was completed or superseded by another replay, or abandoned ('floe replay --abandon'), while this one was writing; it stopped without writing more`,
  );
}

/** Direct access to one (job, generation) of a backend, for export and restore. */
export interface StateScope {
  readonly backend: StateStore & CheckpointStore;
  /** Every live state entry (any order). */
  entries(): AsyncIterable<readonly [StateAddress, string]>;
  /** Number of live entries, for progress (undefined if costly to know). */
  countEntries(): Promise<number | undefined>;
  /**
   * Idempotent upserts, for a generation no worker runs yet. A restore that stalled may write
   * after the generation went live (see restoreSavepoint), so a backend fences these writes: it
   * checks `guard` in the transaction that writes (the embedded backend), or never replaces an
   * entry a commit wrote (DynamoBackend's conditional writes).
   */
  importEntries(entries: ReadonlyArray<readonly [StateAddress, string]>, guard: RestoreGuard): Promise<void>;
  /**
   * Sets a shard's checkpoint; an identical existing one is fine, a different one is an error.
   * Fenced by `guard`, checked in the write's transaction: a stalled restore must not write a
   * checkpoint into a generation whose restore was abandoned (its job id may be reused).
   */
  importCheckpoint(checkpoint: ShardCheckpoint, guard: RestoreGuard): Promise<void>;
  /**
   * Puts outputs into a shard's outbox, as their commits (in the output ids) had left them, to
   * be published by the shard's next worker. Idempotent; for a generation no worker runs yet.
   * Fenced by `guard`, checked in the write's transaction: a stalled restore must not put back
   * outputs the live generation already delivered.
   */
  importOutputs(shardId: string, outputs: readonly Output[], guard: RestoreGuard): Promise<void>;
  /** True when the scope holds no state and no checkpoints. */
  isEmpty(): Promise<boolean>;
  /**
   * Deletes everything of this (job, generation): state entries, undelivered outputs, leases and
   * checkpoints (last, so that a scope interrupted halfway does not look empty). For a generation
   * no worker runs: an abandoned restore's (abandonRestore).
   */
  discard(): Promise<DiscardedScope>;
}

/** What StateScope.discard deleted. */
export interface DiscardedScope {
  readonly stateEntries: number;
  readonly checkpoints: number;
}

/** What savepoints and replay need from a backend. */
export interface SavepointBackend {
  /** 'embedded' or 'aws' (recorded in manifests). */
  readonly kind: string;
  readonly jobs: JobStore;
  readonly snapshots: SnapshotStore;
  scope(job: string, generation: number): StateScope;
  source(stream: string): ShardSource;
  /**
   * Why the records after a saved position can no longer be read (trimmed by the stream's
   * retention, shard gone), or undefined when they can.
   */
  checkResumable(stream: string, shard: ResumePoint): Promise<string | undefined>;
}

export interface ResumePoint {
  readonly shardId: string;
  readonly position: string | undefined;
  readonly next?: string;
  readonly finished: boolean;
}

/** Records after a savepoint's positions are gone from the stream: nothing was restored. */
export class SavepointTrimmedError extends TerminalError {
  readonly code = 'SAVEPOINT_TRIMMED';
}

/** The savepoint's state does not fit the pipeline: nothing was restored. */
export class IncompatibleStateError extends TerminalError {
  readonly code = 'INCOMPATIBLE_STATE';
}

/** Thrown by fault-injection hooks to simulate a crash: no cleanup runs. */
export class SimulatedCrash extends Error {}

// ---- progress and hooks -------------------------------------------------------------------------

export type SavepointProgress =
  | { readonly phase: 'pausing'; readonly waitingFor: readonly string[] }
  | {
      readonly phase: 'export' | 'verify' | 'restore';
      readonly entries: number;
      /** Total entries when known. */
      readonly total: number | undefined;
      readonly files: number;
    };

export type SavepointStep =
  | 'paused'
  | 'file-written'
  | 'before-manifest'
  | 'manifest-written'
  | 'entries-written'
  | 'checkpoints-written'
  | 'before-activate';

interface Hooks {
  readonly onProgress?: (progress: SavepointProgress) => void;
  /** Fault injection: called at each step (with the file index for file steps). */
  readonly onStep?: (step: SavepointStep, index?: number) => void | Promise<void>;
  readonly now?: () => number;
}

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

/**
 * A state file ends once its NDJSON text reaches this many characters, whatever --chunk-entries
 * says: a file is encoded (and decoded on restore) as one string, which V8 caps at 2^29
 * characters, and the savepoint function has 1 GiB; entries of a few KB each (list state,
 * many windows per key) would otherwise make 50,000-entry files of gigabytes.
 */
export const FILE_TEXT_LIMIT = 64 * 1024 * 1024;

// ---- create -------------------------------------------------------------------------------------

export interface CreateSavepointOptions extends Hooks {
  readonly job: string;
  /** Stop the job after the savepoint (stop-with-savepoint). */
  readonly stop?: boolean;
  /** Savepoint id. @default `<job>-<UTC time>-<4 hex>`, or the id of an interrupted savepoint */
  readonly id?: string;
  /** The job's stream, when the job has no record yet. @default the job id */
  readonly stream?: string;
  /**
   * The generation the job's workers run when the job has no record yet (a Lambda job deployed
   * with the construct's `generation`). @default 0
   */
  readonly generation?: number;
  /** Describe the pipeline (default: what the job record says `floe run` last ran). */
  readonly pipeline?: SavepointPipeline;
  readonly operators?: readonly OperatorSchema[];
  /** Lease and marker time to live; both are renewed at a third of it. @default 30000 */
  readonly leaseTtlMs?: number;
  /** How long to wait for workers to pause. @default 120000 */
  readonly timeoutMs?: number;
  /** State entries per file (a file also ends at FILE_TEXT_LIMIT characters of NDJSON). @default 50000 */
  readonly chunkEntries?: number;
  /** Lease owner. @default savepoint:<id> */
  readonly owner?: string;
  /**
   * Checks the job record (undefined: none) before anything is written, e.g. that a flag agrees
   * with it; throws to refuse. Called with the record that the pause request updates, so the
   * caller need not read it again (and again after another writer changed it in between).
   */
  readonly checkRecord?: (record: JobRecord | undefined) => void;
  /** As RestoreOptions.commandArgs. @default unknown: a refusal asks for them in words */
  readonly commandArgs?: string;
}

/**
 * What `floe replay --abandon` takes for `job` with the backend options `commandArgs` ('' for
 * the embedded defaults); undefined when they are not known. Every abandon floe suggests is built
 * from it.
 */
function abandonArgs(job: string, commandArgs: string): string;
function abandonArgs(job: string, commandArgs: string | undefined): string | undefined;
function abandonArgs(job: string, commandArgs: string | undefined): string | undefined {
  if (commandArgs === undefined) return undefined;
  return commandArgs === '' ? `--job ${job}` : `--job ${job} ${commandArgs}`;
}

export async function createSavepoint(
  backend: SavepointBackend,
  options: CreateSavepointOptions,
): Promise<SavepointManifest> {
  const now = options.now ?? Date.now;
  const ttl = options.leaseTtlMs ?? 30_000;
  const job = options.job;
  const initialGeneration = options.generation ?? 0;
  let id = options.id === undefined ? undefined : checkSavepointId(options.id);
  let owner = options.owner;
  let wasStopped = false;
  let resumed = false;
  // 1. Request the pause (or take over an interrupted savepoint's marker).
  const begun = await updateJob(
    backend.jobs,
    job,
    async (current, freed) => {
      options.checkRecord?.(current);
      // Without a record, the workers run the generation they were deployed with (past a removed
      // record's: firstGeneration): the record written here must name that one, or they would
      // switch to another generation's state.
      const first = firstGeneration(freed, initialGeneration);
      if (current === undefined && (await backend.scope(job, first).isEmpty())) {
        throw new ConfigurationError(
          `job ${job} is unknown: it has no job record and no checkpoints; run it first ('floe run ... --job ${job}'), or check the job id and the backend options`,
        );
      }
      const base: Omit<JobRecord, 'version' | 'updatedAt'> = current ?? {
        job,
        generation: first,
        nextGeneration: first + 1,
        state: 'running',
        stream: options.stream ?? job,
      };
      if (base.state === 'restoring') {
        if (base.restore === undefined && base.abandoning !== undefined)
          throw unfinishedAbandon(base, abandonArgs(job, options.commandArgs));
        throw new ConfigurationError(
          `job ${job} is being restored from savepoint ${base.restore?.savepointId ?? '?'}; finish the restore (rerun the 'floe replay' command) before taking a savepoint`,
        );
      }
      const marker = base.savepoint;
      if (marker !== undefined && marker.expiresAt > now() && marker.owner !== owner) {
        throw new ConfigurationError(
          `savepoint ${marker.id} of job ${job} is being taken (by ${marker.owner}, started ${new Date(marker.startedAt).toISOString()}); wait for it to finish, or if it was interrupted, rerun after its hold expires at ${new Date(marker.expiresAt).toISOString()}`,
        );
      }
      id ??= marker?.id ?? (await unusedSavepointId(backend.snapshots, job, now()));
      owner ??= `savepoint:${id}`;
      resumed = marker?.id === id;
      wasStopped = base.state === 'stopped';
      const { savepoint: _s, ...rest } = base;
      return {
        ...rest,
        state: wasStopped ? 'stopped' : 'pausing',
        savepoint: {
          id,
          owner,
          startedAt: marker?.id === id ? marker.startedAt : now(),
          expiresAt: now() + ttl,
          stop: options.stop === true,
        },
      };
    },
    now,
  );
  const record = begun!;
  const savepointId = id!;
  const leaseOwner = owner!;
  const snapshots = backend.snapshots;
  const scope = backend.scope(job, record.generation);
  const leases = new Map<string, Lease>();
  let lastBeat = now();

  const renewMarker = async (): Promise<void> => {
    await updateJob(
      backend.jobs,
      job,
      (current) => {
        if (current?.savepoint?.id !== savepointId || current.savepoint.owner !== leaseOwner) {
          throw new StateFormatError(
            `savepoint ${savepointId} of job ${job} lost its pause marker (another savepoint or a replay took over); it was not completed`,
          );
        }
        const { version: _v, updatedAt: _u, ...rest } = current;
        return { ...rest, savepoint: { ...current.savepoint, expiresAt: now() + ttl } };
      },
      now,
    );
  };
  const renewLeases = async (): Promise<void> => {
    for (const [shardId, lease] of leases) {
      try {
        leases.set(shardId, await scope.backend.renewLease(lease, now(), ttl));
      } catch (error) {
        if (error instanceof FencedError) {
          throw new StateFormatError(
            `savepoint ${savepointId} lost the lease of shard ${shardId} (a worker took it over after it expired); the state may have changed during the export, so the savepoint was not completed. Retry, with a longer --lease-ttl if the export is slow`,
            { cause: error },
          );
        }
        throw error;
      }
    }
  };
  const heartbeat = async (force = false): Promise<void> => {
    if (!force && now() - lastBeat < ttl / 3) return;
    lastBeat = now();
    await renewMarker();
    await renewLeases();
  };
  /**
   * Renews the hold every third of the TTL in the background from the cut until the manifest:
   * reading the cut (hundreds of shards) and the export can go long without a file to write
   * (a scan through pages of other jobs' items), and a hold that expires lets the workers
   * resume and take the leases. A renewal that fails (a lease lost) fails the savepoint at its
   * next file or when the holding ends.
   */
  let holdLost: unknown;
  let holding: { readonly timer: ReturnType<typeof setInterval>; beat: Promise<void> } | undefined;
  const holdInBackground = (): void => {
    const timer = setInterval(() => {
      if (holding === undefined) return;
      holding.beat = holding.beat
        .then(() => heartbeat())
        .catch((error: unknown) => {
          holdLost ??= error;
        });
    }, ttl / 3);
    holding = { timer, beat: Promise.resolve() };
  };
  const stopHolding = async (): Promise<void> => {
    if (holding === undefined) return;
    clearInterval(holding.timer);
    await holding.beat;
    holding = undefined;
    if (holdLost !== undefined) throw holdLost;
  };
  const releaseAll = async (): Promise<void> => {
    for (const lease of leases.values()) await scope.backend.releaseLease(lease).catch(() => {});
    leases.clear();
  };

  const confirmAtCut = async (manifest: SavepointManifest): Promise<void> => {
    await renewMarker();
    for (const [shardId, lease] of leases) {
      try {
        leases.set(shardId, await scope.backend.renewLease(lease, now(), ttl));
      } catch (error) {
        if (!(error instanceof FencedError)) throw error;
        leases.delete(shardId); // a worker took it over: take it back, then compare
      }
    }
    await acquireAllLeases(backend, scope.backend, record.stream, leases, leaseOwner, pauseOptions);
    await checkStillAtCut(scope.backend, manifest);
  };
  const pauseOptions = {
    ttl,
    timeoutMs: options.timeoutMs ?? 120_000,
    now,
    heartbeat,
    onProgress: options.onProgress,
    savepointId,
  };

  try {
    // A manifest already there: an earlier run of this savepoint crashed after writing it.
    const existing = await readManifestIfAny(snapshots, savepointId);
    let manifest: SavepointManifest;
    if (existing !== undefined) {
      if (existing.job !== job || !resumed) {
        throw new ConfigurationError(
          `savepoint ${savepointId} already exists at ${snapshots.describe(savepointId)} for job ${existing.job}; choose another --id`,
        );
      }
      manifest = existing;
    } else {
      // 2. Take every shard's lease: workers release theirs at their next batch boundary.
      await acquireAllLeases(backend, scope.backend, record.stream, leases, leaseOwner, pauseOptions);
      holdInBackground();
      await options.onStep?.('paused');
      // 3. Read the cut: checkpoints, then state.
      const checkpoints = await scope.backend.listCheckpoints();
      checkpoints.sort((a, b) => (a.shardId < b.shardId ? -1 : a.shardId > b.shardId ? 1 : 0));
      const source = backend.source(record.stream);
      const shards: SavepointShard[] = [];
      const outboxes: Output[][] = [];
      for (const cp of checkpoints) {
        const next = cp.finished ? undefined : await peekNext(source, cp);
        // Timers inline: a savepoint does not export timer chunks, so it does not depend on them.
        const inline = await withInlineTimers(cp, scope.backend);
        shards.push({ checkpoint: checkpointJson(inline), ...(next === undefined ? {} : { next }) });
        // Outputs committed up to the cut but not delivered yet (a worker died before publishing):
        // the restored job resumes after the cut, so it would never produce them again.
        outboxes.push(await scope.backend.unpublishedOutputs(cp.shardId));
      }
      await snapshots.remove(savepointId); // files of an interrupted attempt
      for (const [i, outputs] of outboxes.entries()) {
        if (outputs.length === 0) continue;
        const encoded = encodeOutboxFile(outboxFileName(i), outputs);
        await snapshots.write(savepointId, encoded.file.name, encoded.data);
        shards[i] = { ...shards[i]!, outbox: encoded.file };
      }
      const operators = [...(options.operators ?? record.operators ?? [])];
      const known = operators.map((o) => o.uid);
      // Timer chunks are counted by the scope but not exported: the total shrinks as they are met.
      let total = await scope.countEntries();
      const chunk = Math.max(1, options.chunkEntries ?? 50_000);
      const files: SavepointFile[] = [];
      let entries = 0;
      let bytes = 0;
      let batch: Array<readonly [StateAddress, string]> = [];
      let batchText = 0;
      const flush = async (): Promise<void> => {
        const name = stateFileName(files.length);
        const encoded = encodeStateFile(name, batch);
        await snapshots.write(savepointId, name, encoded.data);
        files.push(encoded.file);
        entries += batch.length;
        bytes += encoded.file.bytes;
        batch = [];
        batchText = 0;
        options.onProgress?.({ phase: 'export', entries, total, files: files.length });
        await options.onStep?.('file-written', files.length - 1);
        if (holdLost !== undefined) throw holdLost;
        await heartbeat();
      };
      options.onProgress?.({ phase: 'export', entries: 0, total, files: 0 });
      for await (const entry of scope.entries()) {
        if (isTimerChunkAddress(entry[0])) {
          if (total !== undefined) total--; // its timers are inline in the manifest's checkpoints
          continue;
        }
        if (!known.some((uid) => entry[0].startsWith(`${uid}/`))) {
          const uid = operatorOfAddress(entry[0], (JSON.parse(entry[1]) as { k: string | number }).k);
          if (!known.includes(uid)) {
            known.push(uid);
            operators.push({ uid, kind: 'unknown', state: {} });
          }
        }
        batch.push(entry);
        batchText += entry[0].length + entry[1].length + 12; // the line's {"a":…,"v":…}
        if (batch.length >= chunk || batchText >= FILE_TEXT_LIMIT) await flush();
      }
      if (batch.length > 0 || files.length === 0) await flush();
      await stopHolding();
      // 4. Still holding every lease: nothing committed during the export.
      await heartbeat(true);
      await options.onStep?.('before-manifest');
      manifest = sealManifest({
        format: SAVEPOINT_FORMAT,
        id: savepointId,
        createdAt: now(),
        job,
        generation: record.generation,
        stream: record.stream,
        backend: backend.kind,
        pipeline: options.pipeline ?? record.pipeline ?? { name: job, version: 'unknown' },
        stopped: options.stop === true,
        ...(record.startPosition === undefined ? {} : { startPosition: record.startPosition }),
        stateFormat: STATE_FORMAT_VERSION,
        checkpointFormat: CHECKPOINT_FORMAT,
        operators,
        shards,
        files,
        entries,
        bytes,
      });
      await snapshots.write(
        savepointId,
        MANIFEST_FILE,
        new TextEncoder().encode(serializeManifest(manifest)),
      );
      await options.onStep?.('manifest-written');
    }
    // The hold may have expired since the cut (this run stalled after its last renewal, or it
    // is the rerun of a crashed one) and the workers run on past it: stopping the job then would
    // leave outputs the savepoint does not account for, which a replay from it would produce a
    // second time. Check under every lease.
    if (manifest.stopped) await confirmAtCut(manifest);
    // 5. Resume (or stop) the job and clear the marker.
    await updateJob(
      backend.jobs,
      job,
      (current) => {
        if (current === undefined) return undefined;
        const { version: _v, updatedAt: _u, savepoint, ...rest } = current;
        if (savepoint?.id !== savepointId) return undefined;
        const stop = manifest.stopped || savepoint.stop;
        return {
          ...rest,
          state: stop || wasStopped ? 'stopped' : 'running',
          ...(stop ? { stoppedBy: { savepointId, at: manifest.createdAt } } : {}),
        };
      },
      now,
    );
    await releaseAll();
    return manifest;
  } catch (error) {
    await stopHolding().catch(() => {});
    if (error instanceof SimulatedCrash) throw error;
    // Give the job back: clear our marker (if still ours) and release the leases.
    await releaseAll();
    await updateJob(
      backend.jobs,
      job,
      (current) => {
        if (current?.savepoint?.id !== savepointId || current.savepoint.owner !== leaseOwner)
          return undefined;
        const { version: _v, updatedAt: _u, savepoint: _s, ...rest } = current;
        return { ...rest, state: wasStopped ? 'stopped' : 'running' };
      },
      now,
    ).catch(() => {});
    throw error;
  }
}

/**
 * A new savepoint id (newSavepointId) that no savepoint in the store has yet. Two savepoints of a
 * job taken in the same second differ only by their 4 random hex digits, which can be equal (1 in
 * 65,536): the second would then be refused as "already exists" (or remove the files an
 * interrupted one left). On a collision, the next suffix is taken instead.
 */
async function unusedSavepointId(snapshots: SnapshotStore, job: string, now: number): Promise<string> {
  const first = Math.floor(Math.random() * 0x10000);
  for (let step = 0; step < 0x10000; step++) {
    const id = newSavepointId(job, now, () => ((first + step) % 0x10000) / 0x10000);
    if ((await snapshots.listFiles(id)).length === 0) return id;
  }
  throw new ConfigurationError(
    `job ${job} has 65,536 savepoints taken in the second of ${new Date(now).toISOString()}; pass --id`,
  );
}

async function acquireAllLeases(
  backend: SavepointBackend,
  store: CheckpointStore,
  stream: string,
  leases: Map<string, Lease>,
  owner: string,
  o: {
    ttl: number;
    timeoutMs: number;
    now: () => number;
    heartbeat: () => Promise<void>;
    onProgress: ((p: SavepointProgress) => void) | undefined;
    savepointId: string;
  },
): Promise<void> {
  const source = backend.source(stream);
  const deadline = o.now() + o.timeoutMs;
  const busy = new Map<string, string>();
  for (;;) {
    const ids = new Set<string>([
      ...(await source.listShards()).map((s) => s.shardId),
      ...(await store.listCheckpoints()).map((c) => c.shardId),
    ]);
    const missing = [...ids].filter((shardId) => !leases.has(shardId));
    if (missing.length === 0) return;
    for (const shardId of missing) {
      try {
        leases.set(shardId, await store.acquireLease(shardId, owner, o.now(), o.ttl));
        busy.delete(shardId);
      } catch (error) {
        if (!(error instanceof LeaseUnavailableError)) throw error;
        busy.set(shardId, error.message);
      }
    }
    if (busy.size === 0) continue; // list again: a reshard may have added shards
    o.onProgress?.({ phase: 'pausing', waitingFor: [...busy.keys()] });
    if (o.now() > deadline) {
      throw new ConfigurationError(
        `savepoint ${o.savepointId}: after ${Math.round(o.timeoutMs / 1000)} s, ${busy.size} shard(s) are still leased by workers that did not pause (${[...busy.values()][0]}). Workers pause between batches; a crashed worker's lease expires after its TTL. Retry, or raise --timeout`,
      );
    }
    await o.heartbeat();
    await sleep(200);
  }
}

/** Refuses a completed savepoint whose job committed after it (a shard's commit number moved on). */
async function checkStillAtCut(store: CheckpointStore, manifest: SavepointManifest): Promise<void> {
  const saved = new Map(manifestCheckpoints(manifest).map((cp) => [cp.shardId, cp.commitNumber]));
  const moved = (await store.listCheckpoints()).filter(
    (cp) => cp.commitNumber !== (saved.get(cp.shardId) ?? 0),
  );
  if (moved.length === 0) return;
  throw new ConfigurationError(
    `savepoint ${manifest.id} of job ${manifest.job} is complete, but the job ran on after it (shard ${moved[0]!.shardId} is at commit ${moved[0]!.commitNumber}, the savepoint at ${saved.get(moved[0]!.shardId) ?? 'none'}): its hold expired before the job could be stopped (the savepoint was interrupted or stalled). The job was not stopped, as a replay from this savepoint would produce those commits' outputs again; take a new one ('floe savepoint create --job ${manifest.job} --stop')`,
  );
}

/** The position of the first record after a checkpoint, if the stream has one now. */
async function peekNext(source: ShardSource, cp: ShardCheckpoint): Promise<string | undefined> {
  if (cp.position === undefined) return undefined;
  try {
    const reader = await source.openReader(cp.shardId, {
      type: 'AFTER_SEQUENCE_NUMBER',
      sequenceNumber: cp.position,
    });
    try {
      for (let attempt = 0; attempt < 3; attempt++) {
        const read = await reader.read(1);
        const first = read.records[0];
        if (first !== undefined) return first.sequenceNumber;
        if (read.millisBehindLatest === 0 || read.shardEnded) return undefined;
      }
      return undefined;
    } finally {
      await reader.close?.();
    }
  } catch {
    return undefined; // informative only
  }
}

async function readManifestIfAny(
  snapshots: SnapshotStore,
  id: string,
): Promise<SavepointManifest | undefined> {
  const data = await snapshots.read(id, MANIFEST_FILE);
  if (data === undefined) return undefined;
  const manifest = parseManifest(new TextDecoder().decode(data), snapshots.describe(id, MANIFEST_FILE));
  if (manifest.id !== id) {
    throw new StateFormatError(
      `${snapshots.describe(id, MANIFEST_FILE)} belongs to savepoint ${manifest.id}; a savepoint must stay under its own id (rename the directory back to ${manifest.id})`,
    );
  }
  return manifest;
}

/** Reads and validates a savepoint's manifest, with a clear error when it is missing or incomplete. */
export async function readManifest(snapshots: SnapshotStore, id: string): Promise<SavepointManifest> {
  checkSavepointId(id);
  const manifest = await readManifestIfAny(snapshots, id);
  if (manifest !== undefined) return manifest;
  const files = await snapshots.listFiles(id);
  if (files.length === 0) {
    throw new ConfigurationError(
      `savepoint ${id} not found at ${snapshots.describe(id)}; 'floe savepoint list' shows the savepoints there`,
    );
  }
  throw new StateFormatError(
    `savepoint ${id} at ${snapshots.describe(id)} is incomplete: it has no ${MANIFEST_FILE} (its export was interrupted, or the manifest was deleted). Rerun 'floe savepoint create' for the job to complete it, or delete it`,
  );
}

// ---- list, inspect, delete ----------------------------------------------------------------------

export interface SavepointSummary {
  readonly id: string;
  readonly status: 'complete' | 'incomplete' | 'damaged';
  readonly manifest?: SavepointManifest;
  readonly problem?: string;
}

export async function listSavepoints(snapshots: SnapshotStore): Promise<SavepointSummary[]> {
  const out: SavepointSummary[] = [];
  for (const id of (await snapshots.listSavepoints()).sort()) {
    try {
      const manifest = await readManifestIfAny(snapshots, id);
      out.push(manifest === undefined ? { id, status: 'incomplete' } : { id, status: 'complete', manifest });
    } catch (error) {
      out.push({ id, status: 'damaged', problem: (error as Error).message });
    }
  }
  return out.sort(
    (a, b) => (a.manifest?.createdAt ?? 0) - (b.manifest?.createdAt ?? 0) || (a.id < b.id ? -1 : 1),
  );
}

/** Verifies every file of a savepoint (sha256, size, decompression, entry counts). */
export async function verifySavepoint(
  snapshots: SnapshotStore,
  manifest: SavepointManifest,
  onProgress?: (p: SavepointProgress) => void,
  /** Called with each verified file's entries (a restore runs its migration over them here). */
  check?: (rows: ReadonlyArray<readonly [StateAddress, string]>, where: string) => void,
): Promise<void> {
  let entries = 0;
  for (const [i, file] of manifest.files.entries()) {
    const where = `state file ${snapshots.describe(manifest.id, file.name)}`;
    const rows = decodeStateFile(await snapshots.read(manifest.id, file.name), file, where);
    check?.(rows, where);
    entries += rows.length;
    onProgress?.({ phase: 'verify', entries, total: manifest.entries, files: i + 1 });
  }
  if (entries !== manifest.entries) {
    throw new StateFormatError(
      `savepoint ${manifest.id} holds ${entries} entries; its manifest says ${manifest.entries}`,
    );
  }
  for (const shard of manifest.shards) await readOutbox(snapshots, manifest, shard);
}

/** A shard's undelivered outputs saved with the savepoint (verified), or none. */
async function readOutbox(
  snapshots: SnapshotStore,
  manifest: SavepointManifest,
  shard: SavepointShard,
): Promise<Output[]> {
  const file = shard.outbox;
  if (file === undefined) return [];
  return decodeOutboxFile(
    await snapshots.read(manifest.id, file.name),
    file,
    `outbox file ${snapshots.describe(manifest.id, file.name)}`,
  );
}

/**
 * Deletes a savepoint's files. An interrupted savepoint's marker is cleared from its job
 * record; a savepoint being taken right now cannot be deleted, nor one that an unfinished
 * restore still reads (a job record `restoring` from it: only a rerun of that replay, which
 * reads the savepoint again, can complete it).
 */
export async function deleteSavepoint(
  backend: Pick<SavepointBackend, 'snapshots' | 'jobs'>,
  id: string,
  options: {
    readonly job?: string;
    readonly now?: () => number;
    /**
     * The backend options of the commands the refusal suggests (e.g. `--backend aws
     * --state-table ...`): the replay and the abandon must use the resources the restore wrote to.
     * @default none
     */
    readonly commandArgs?: string;
  } = {},
): Promise<void> {
  const now = options.now ?? Date.now;
  checkSavepointId(id);
  const args = options.commandArgs ? ` ${options.commandArgs}` : '';
  const restoring = await backend.jobs.restoresFrom(id);
  if (restoring.length > 0) {
    const r = restoring[0]!;
    throw new ConfigurationError(
      `savepoint ${id} is being restored into job ${r.job} (generation ${r.restore!.generation}, started ${new Date(r.restore!.startedAt).toISOString()})${
        restoring.length > 1
          ? ` and ${restoring.length - 1} other job(s) (${restoring
              .slice(1)
              .map((o) => o.job)
              .join(', ')})`
          : ''
      }, which did not finish: only a rerun of that replay, which reads the savepoint again, can complete it. Finish it first — rerun that replay ('floe replay --from-savepoint ${id} --as-job ${r.job} --restore-only${args}', with the same --pipeline and --migration) — or give it up ('floe replay --abandon ${abandonArgs(r.job, options.commandArgs ?? '')}'), then delete the savepoint`,
    );
  }
  const files = await backend.snapshots.listFiles(id);
  let job = options.job;
  if (job === undefined) {
    try {
      job = (await readManifestIfAny(backend.snapshots, id))?.job;
    } catch {
      job = undefined;
    }
  }
  if (job !== undefined) {
    await updateJob(
      backend.jobs,
      job,
      (current) => {
        if (current?.savepoint?.id !== id) return undefined;
        if (current.savepoint.expiresAt > now()) {
          throw new ConfigurationError(`savepoint ${id} is being taken right now; wait for it to finish`);
        }
        const { version: _v, updatedAt: _u, savepoint: _s, ...rest } = current;
        return { ...rest, state: current.state === 'pausing' ? 'running' : current.state };
      },
      now,
    );
  }
  if (files.length === 0) {
    throw new ConfigurationError(`savepoint ${id} not found at ${backend.snapshots.describe(id)}`);
  }
  await backend.snapshots.remove(id);
}

// ---- restore ------------------------------------------------------------------------------------

export interface RestoreOptions extends Hooks {
  readonly savepointId: string;
  /** The pipeline that will run the restored job. */
  readonly plan: PipelinePlan;
  /** Restore into this job id (a copy beside the original). @default the savepoint's job, in a new generation */
  readonly asJob?: string;
  readonly migration?: StateMigration;
  /** Drop the state of operators the pipeline no longer has. @default false */
  readonly allowNonRestoredState?: boolean;
  /** Recorded in the job record (e.g. the pipeline module path). */
  readonly pipeline?: SavepointPipeline;
  /** Entries per import batch. @default 2000 */
  readonly batchEntries?: number;
  /**
   * The backend options of the commands a refusal suggests (e.g. `--backend aws --state-table
   * ...`, or a non-default `--data-dir`; '' for the embedded defaults). @default none; the rerun
   * of an interrupted abandon is then asked for "with the same backend options"
   */
  readonly commandArgs?: string;
}

export interface RestoreResult {
  readonly manifest: SavepointManifest;
  readonly job: string;
  readonly generation: number;
  /** State entries read from the savepoint. */
  readonly entries: number;
  /** State entries written: fewer when a removed operator's state was dropped, any number after a migration. */
  readonly written: number;
  readonly shards: number;
  readonly warnings: readonly string[];
}

/**
 * Why job `target` (its record `current`) cannot take a restore of `manifest` that is not a
 * rerun of its own: another restore into it is unfinished, or it is another job than the
 * savepoint's (a replay --as-job needs a new id). Undefined: it can (the savepoint's own job).
 */
function targetRefusal(
  current: JobRecord,
  target: string,
  manifest: SavepointManifest,
  commandArgs: string | undefined,
): ConfigurationError | undefined {
  if (current.state === 'restoring') {
    return new ConfigurationError(
      `job ${target} is being restored from savepoint ${current.restore?.savepointId ?? '?'}; rerun that replay to complete it (or give it up: 'floe replay --abandon ${abandonArgs(target, commandArgs ?? '')}'), or choose another --as-job id`,
    );
  }
  if (target !== manifest.job) {
    return new ConfigurationError(
      `job ${target} already exists (generation ${current.generation}); choose a new --as-job id, or omit --as-job to restore job ${manifest.job} into a new generation`,
    );
  }
  return undefined;
}

export async function restoreSavepoint(
  backend: SavepointBackend,
  options: RestoreOptions,
): Promise<RestoreResult> {
  const now = options.now ?? Date.now;
  const snapshots = backend.snapshots;
  const manifest = await readManifest(snapshots, options.savepointId);
  const target = options.asJob ?? manifest.job;
  const migration = options.migration === undefined ? undefined : asStateMigration(options.migration);
  const targetSchemas = new Map(operatorSchemas(options.plan).map((o) => [o.uid, o]));
  const savedSchemas = new Map(manifest.operators.map((o) => [o.uid, o]));
  const restoredAt = now();
  const migrate =
    migration?.state === undefined ? undefined : migrator(migration, savedSchemas, targetSchemas, restoredAt);

  // A target job that cannot take the restore is refused before the files are read (a large
  // savepoint takes a while to verify); the claim below checks again, as the record can change.
  const existing = await backend.jobs.get(target);
  if (existing?.abandoning !== undefined)
    throw unfinishedAbandon(existing, abandonArgs(target, options.commandArgs));
  if (existing?.restore?.savepointId !== manifest.id) {
    const refused =
      existing === undefined ? undefined : targetRefusal(existing, target, manifest, options.commandArgs);
    if (refused !== undefined) throw refused;
  }

  // Everything that can refuse the restore runs before anything is written: the migration too,
  // over every entry, as it reads the files to verify them (it runs again as they are written).
  // An entry it refuses, or a throw, after some files were written would leave them in the
  // target generation, where a rerun with a fixed migration would keep them.
  let migrated = 0;
  const seen = new Set<string>();
  await verifySavepoint(
    snapshots,
    manifest,
    options.onProgress,
    migrate === undefined
      ? undefined
      : (rows, where) => {
          for (const [address, value] of rows) {
            for (const [to, migratedValue] of migrate(address, value, where, 'verify')) {
              // Two entries for one (operator, key): the store keeps one, the count says both.
              if (seen.has(to)) {
                throw new IncompatibleStateError(
                  `the migration returned a second state entry for ${describeEntry(to, migratedValue)} (from the saved entry of ${describeEntry(address, value)} in ${where}); a key holds one entry per operator: merge them in the migration. Nothing was restored`,
                );
              }
              seen.add(to);
              migrated++;
            }
          }
        },
  );
  seen.clear();
  const report = checkCompatibility(manifest.operators, options.plan, {
    allowNonRestoredState: options.allowNonRestoredState === true,
  });
  // A state migration takes responsibility for the layout; a timer-only one does not.
  const migratesState = migration?.state !== undefined;
  if (!report.compatible && !migratesState) throw incompatible(manifest, options.plan, report.issues);
  const warnings = report.issues.filter((i) => !i.fatal || migratesState).map((i) => i.message);
  const trimmed: string[] = [];
  const checkpoints = manifestCheckpoints(manifest);
  for (const [i, cp] of checkpoints.entries()) {
    const next = manifest.shards[i]?.next;
    const reason = await backend.checkResumable(manifest.stream, {
      shardId: cp.shardId,
      position: cp.position,
      ...(next === undefined ? {} : { next }),
      finished: cp.finished,
    });
    if (reason !== undefined) trimmed.push(reason);
  }
  if (trimmed.length > 0) {
    throw new SavepointTrimmedError(
      `cannot replay savepoint ${manifest.id} of job ${manifest.job} (taken ${new Date(manifest.createdAt).toISOString()}): ${trimmed.join('; ')}. Nothing was restored. Replay from a newer savepoint, or start a new job from a timestamp with 'floe replay --from-timestamp'`,
    );
  }
  const dropped = new Set(report.dropped);
  /** Pending timers dropped by default (their operator is gone), by operator. */
  const droppedTimers = new Map<string, number>();
  const transformTimers = (cp: ShardCheckpoint): ShardCheckpoint => {
    const timers = cp.timers.flatMap((t) => {
      if (migration?.timer !== undefined) {
        const where = `the ${t.domain}-time timer of operator "${t.operator}" for key ${describeValue(t.key)} at ${describeValue(t.time)} (namespace ${describeValue(t.namespace)}) of shard ${cp.shardId}`;
        let mapped: unknown;
        try {
          mapped = migration.timer({ ...t });
        } catch (error) {
          throw new IncompatibleStateError(
            `the migration's timer() threw on ${where}: ${errorMessage(error)}. Nothing was restored: fix the migration and rerun the replay`,
            { cause: error },
          );
        }
        if (mapped === undefined || mapped === null) return [];
        // As a checkpoint stores it and a worker restores it: a timer a checkpoint cannot hold
        // would fail the shard ("checkpoint is corrupted"), or never fire (a NaN time).
        try {
          return [checkMigratedTimer(mapped, targetSchemas, where)];
        } catch (error) {
          throw new IncompatibleStateError(
            `${(error as Error).message}. Nothing was restored: fix the migration and rerun the replay`,
            { cause: error },
          );
        }
      }
      if (targetSchemas.has(t.operator)) return [t];
      droppedTimers.set(t.operator, (droppedTimers.get(t.operator) ?? 0) + 1);
      return [];
    });
    return { ...cp, timers };
  };
  // Run the timer mapping before writing anything too (it can throw).
  const restoredCheckpoints = checkpoints.map(transformTimers);
  // A state migration may have moved these operators' state to another uid: without their
  // timers, the windows and process functions waiting on one never fire. (Without a migration,
  // the removed-operator issue above already says its timers are dropped.)
  for (const [uid, n] of migratesState ? droppedTimers : []) {
    warnings.push(
      `${n} pending timer(s) of operator "${uid}" were dropped, as pipeline "${options.plan.name}" has no operator with that uid. If the migration moves its state to another uid, move its timers too: the migration's timer(timer) can return { ...timer, operator: '<new uid>' }`,
    );
  }

  // Claim the target generation.
  let generation = -1;
  await updateJob(
    backend.jobs,
    target,
    async (current, freed) => {
      const base = {
        stream: manifest.stream,
        pipeline: options.pipeline ?? { name: options.plan.name, version: options.plan.version },
        operators: [...targetSchemas.values()],
      };
      if (current?.abandoning !== undefined)
        throw unfinishedAbandon(current, abandonArgs(target, options.commandArgs));
      if (current?.restore !== undefined && current.restore.savepointId === manifest.id) {
        // A rerun of a crashed restore. The record is written again, unchanged, so that the
        // store's own markers of the restore are there even if an older floe wrote it (on
        // DynamoDB, the `restoring` attribute each restored outbox item is checked against).
        generation = current.restore.generation;
        const { version: _v, updatedAt: _u, ...same } = current;
        return same;
      }
      if (current === undefined) {
        // A new job: generation 0, or past the generations of a removed record of the id (an
        // abandoned restore's, which a restore process still running may write into).
        generation = firstGeneration(freed);
        if (!(await backend.scope(target, generation).isEmpty())) {
          throw new ConfigurationError(
            `job ${target} has state but no job record (it was run by an older floe); restore into another --as-job id`,
          );
        }
        return {
          job: target,
          generation,
          nextGeneration: generation + 1,
          state: 'restoring',
          ...base,
          restore: { savepointId: manifest.id, generation, startedAt: restoredAt },
        };
      }
      const refused = targetRefusal(current, target, manifest, options.commandArgs);
      if (refused !== undefined) throw refused;
      if (current.stream !== manifest.stream) {
        throw new ConfigurationError(
          `job ${target} now reads stream "${current.stream}", but the savepoint holds positions in "${manifest.stream}"`,
        );
      }
      generation = current.nextGeneration;
      const { version: _v, updatedAt: _u, ...rest } = current;
      return {
        ...rest,
        nextGeneration: generation + 1,
        restore: { savepointId: manifest.id, generation, startedAt: restoredAt },
      };
    },
    now,
  );
  const scope = backend.scope(target, generation);
  // A restore that stalled (a suspended process) while a rerun completed it and workers of the
  // generation committed would put the savepoint's values back over theirs: before each batch,
  // check that the restore is still ours and not switched yet. A batch already past this check
  // is fenced by the backend (StateScope.importEntries; docs/savepoints.md).
  const guard: RestoreGuard = { job: target, savepointId: manifest.id, generation };
  const stillRestoring = async (): Promise<void> => {
    if (!namesRestore(await backend.jobs.get(target), guard)) throw supersededRestore(guard);
  };
  const importEntries = async (entries: ReadonlyArray<readonly [StateAddress, string]>): Promise<void> => {
    await stillRestoring();
    await scope.importEntries(entries, guard);
  };

  // State, file by file (each verified again as it is read), in idempotent batches.
  const batchSize = Math.max(1, options.batchEntries ?? 2000);
  let read = 0;
  let written = 0;
  options.onProgress?.({ phase: 'restore', entries: 0, total: manifest.entries, files: 0 });
  for (const [i, file] of manifest.files.entries()) {
    const where = `state file ${snapshots.describe(manifest.id, file.name)}`;
    const rows = decodeStateFile(await snapshots.read(manifest.id, file.name), file, where);
    let out: Array<readonly [StateAddress, string]> = [];
    for (const [address, value] of rows) {
      if (migrate !== undefined) {
        for (const encoded of migrate(address, value, where, 'write', written + out.length))
          out.push(encoded);
      } else if (dropped.size === 0 || !isDropped(address, value, dropped)) {
        out.push([address, value]);
      }
      if (out.length >= batchSize) {
        await importEntries(out);
        written += out.length;
        out = [];
      }
    }
    if (out.length > 0) await importEntries(out);
    written += out.length;
    read += rows.length;
    options.onProgress?.({ phase: 'restore', entries: read, total: manifest.entries, files: i + 1 });
    await options.onStep?.('entries-written', i);
  }
  // The outputs the job had committed but not delivered at the savepoint are this job's to
  // deliver: its next workers publish them, ids unchanged, before they read on.
  let outputs = 0;
  for (const [i, shard] of manifest.shards.entries()) {
    const pending = await readOutbox(snapshots, manifest, shard);
    if (pending.length === 0) continue;
    outputs += pending.length;
    if (target === manifest.job) {
      await stillRestoring();
      await scope.importOutputs(checkpoints[i]!.shardId, pending, guard);
    }
  }
  if (migrate !== undefined && written !== migrated) {
    warnings.push(
      `the migration returned ${written} state entries as they were written but ${migrated} as they were verified: it does not return the same for the same entry (it depends on time, randomness or its own state). A migration must be deterministic`,
    );
  }
  if (outputs > 0 && target !== manifest.job) {
    warnings.push(
      `${outputs} output(s) job ${manifest.job} had committed but not delivered at the savepoint were not copied into job ${target}: they are ${manifest.job}'s; restore the savepoint into ${manifest.job} (without --as-job) to deliver them`,
    );
  }
  await stillRestoring();
  for (const cp of restoredCheckpoints) await scope.importCheckpoint(cp, guard);
  await options.onStep?.('checkpoints-written');
  await options.onStep?.('before-activate');

  // The completion marker: the job record now points at the restored generation.
  await updateJob(
    backend.jobs,
    target,
    (current) => {
      // This switch already landed: a write whose reply was lost is retried (DynamoJobStore)
      // and then fails its version condition, and updateJob asks again.
      if (
        current?.restore === undefined &&
        current?.generation === generation &&
        current.restoredFrom?.savepointId === manifest.id &&
        current.restoredFrom.at >= restoredAt
      ) {
        return undefined;
      }
      if (current?.restore?.savepointId !== manifest.id || current.restore.generation !== generation) {
        throw new ConfigurationError(
          `the restore of savepoint ${manifest.id} into job ${target} was superseded by another replay; nothing was switched`,
        );
      }
      const {
        version: _v,
        updatedAt: _u,
        restore: _r,
        savepoint: _s,
        stoppedBy: _b,
        startPosition: _p,
        ...rest
      } = current;
      return {
        ...rest,
        generation,
        state: 'running',
        stream: manifest.stream,
        pipeline: options.pipeline ?? { name: options.plan.name, version: options.plan.version },
        operators: [...targetSchemas.values()],
        ...(manifest.startPosition === undefined ? {} : { startPosition: manifest.startPosition }),
        restoredFrom: { savepointId: manifest.id, at: now() },
      };
    },
    now,
  );
  return {
    manifest,
    job: target,
    generation,
    entries: read,
    written,
    shards: restoredCheckpoints.length,
    warnings,
  };
}

/** `operator "counts", key "p3"` of a state entry (its address and value JSON). */
function describeEntry(address: StateAddress, value: string): string {
  const key = (JSON.parse(value) as { k: string | number }).k;
  return `operator "${operatorOfAddress(address, key)}", key ${describeValue(key)}`;
}

/**
 * Runs a state migration over one saved entry and encodes what it returns for the new pipeline.
 * Failures name the operator, key and file; in the verification pass (`verify`) they say that
 * nothing was restored. In the write pass the same entries passed already: a failure there means
 * the migration is not deterministic, and the restore stays in progress.
 */
function migrator(
  migration: StateMigration,
  savedSchemas: ReadonlyMap<string, OperatorSchema>,
  targetSchemas: ReadonlyMap<string, OperatorSchema>,
  restoredAt: number,
): (
  address: StateAddress,
  value: string,
  where: string,
  pass: 'verify' | 'write',
  written?: number,
) => Array<[StateAddress, string]> {
  const state = migration.state!.bind(migration);
  return (address, value, where, pass, written = 0) => {
    const entry = decodeSavedEntry(address, value, savedSchemas);
    const saved = `the saved state entry of operator "${entry.operator}" for key ${describeValue(entry.key)} (${where})`;
    const fail = (what: string, cause?: unknown): never => {
      if (pass === 'verify') {
        throw new IncompatibleStateError(
          `${what}. Nothing was restored: fix the migration and rerun the replay`,
          { cause },
        );
      }
      throw new StateFormatError(
        `${what}. The migration passed on the same entry before anything was written, so it does not return the same for the same entry: a migration must be deterministic. ${written} state entries were written and the restore is still in progress: rerun the same replay to complete it`,
        { cause },
      );
    };
    let mapped: ReturnType<NonNullable<StateMigration['state']>>;
    try {
      mapped = state(entry, { from: savedSchemas.get(entry.operator), to: targetSchemas });
    } catch (error) {
      return fail(`the migration threw on ${saved}: ${errorMessage(error)}`, error);
    }
    const list = mapped === undefined || mapped === null ? [] : Array.isArray(mapped) ? mapped : [mapped];
    const out: Array<[StateAddress, string]> = [];
    const here = new Set<string>();
    for (const m of list as SavedStateEntry[]) {
      let encoded: [StateAddress, string] | undefined;
      try {
        encoded = encodeMigratedEntry(m, targetSchemas, restoredAt);
      } catch (error) {
        return fail(`${(error as Error).message} (returned for ${saved})`, error);
      }
      if (encoded === undefined) continue;
      if (here.has(encoded[0])) {
        return fail(
          `the migration returned two state entries for ${describeEntry(...encoded)} from ${saved}; a key holds one entry per operator: merge them in the migration`,
        );
      }
      here.add(encoded[0]);
      out.push(encoded);
    }
    return out;
  };
}

function isDropped(address: string, value: string, dropped: ReadonlySet<string>): boolean {
  // An address is `${uid}/${JSON key}`: only a dropped uid's prefix can match.
  if (![...dropped].some((uid) => address.startsWith(`${uid}/`))) return false;
  const key = (JSON.parse(value) as { k: string | number }).k;
  return dropped.has(operatorOfAddress(address, key));
}

function incompatible(
  manifest: SavepointManifest,
  plan: PipelinePlan,
  issues: readonly CompatibilityIssue[],
): IncompatibleStateError {
  const fatal = issues.filter((i) => i.fatal).map((i) => i.message);
  return new IncompatibleStateError(
    `the state in savepoint ${manifest.id} (pipeline ${manifest.pipeline.name} version ${manifest.pipeline.version}) does not fit pipeline ${plan.name} version ${plan.version}, so nothing was restored: ${fatal.join('; ')}. Keep operator uids and state declarations compatible, pass --allow-non-restored-state to drop the state of removed operators, or supply a migration (--migration <module.ts>, see docs/savepoints.md)`,
  );
}

// ---- abandon a restore ----------------------------------------------------------------------------

/** `floe replay --abandon` of a job without a record, or without a restore in progress. */
export class NoRestoreToAbandonError extends TerminalError {
  readonly code = 'NO_RESTORE_TO_ABANDON';
}

export interface AbandonResult {
  readonly job: string;
  readonly savepointId: string;
  /** The abandoned generation, whose partial state was deleted. */
  readonly generation: number;
  /**
   * The job record now: the one before the restore began (the generation it ran, its state),
   * with `nextGeneration` past the abandoned one; undefined when the restore had created the
   * job (a replay with --as-job, or of a job without a record), whose record was deleted.
   */
  readonly record: JobRecord | undefined;
  /**
   * The smallest generation the job may use from now on: a later replay's, or when the record
   * was deleted, that of a later job of the id (JobStore.delete, firstGeneration).
   */
  readonly nextGeneration: number;
  readonly discarded: DiscardedScope;
  /** True when this call finished an abandon that had been interrupted. */
  readonly resumed: boolean;
  /**
   * The record of a later generation that another command started after a concurrent call
   * finished this abandon (e.g. `floe run` of an id the abandon had freed); `record` is then
   * undefined, as it is not the job as the abandon left it.
   */
  readonly laterJob?: JobRecord;
}

/**
 * Gives up a restore that did not complete (`floe replay --abandon`). First, with the same
 * compare-and-set on the job record that the restore's switch uses, the record loses `restore`
 * (and, in the same write, gets `abandoning`): from then on the restore's checks fail — before
 * each batch, and in the write of each batch, outbox item and checkpoint (StateScope) — and its
 * switch is refused, so a restore process still running stops without completing. A job the
 * restore created (state `restoring`) keeps that state meanwhile, so nothing runs it. Then the
 * abandoned generation's state, outputs and checkpoints are deleted, and finally the record
 * loses `abandoning` (the record as it was before the restore began, except `nextGeneration`,
 * which stays past the abandoned generation: a later replay restores into a fresh one) or, for
 * a job the restore created, is deleted (conditionally on its version), so that the id can be
 * used again — leaving its `nextGeneration` (JobStore.delete), so that a later job of the id
 * starts past the abandoned generation too. Either way, what a restore process suspended in the
 * middle of a write (on DynamoDB, a batch of state entries: their writes cannot check the
 * record) writes after the deletion lies in a generation no job uses again. Interrupted, a rerun
 * finishes it.
 */
export async function abandonRestore(
  backend: Pick<SavepointBackend, 'jobs' | 'scope'>,
  options: { readonly job: string; readonly now?: () => number },
): Promise<AbandonResult> {
  const now = options.now ?? Date.now;
  const { job } = options;
  let resumed = false;
  const marked = await updateJob(
    backend.jobs,
    job,
    (current) => {
      if (current === undefined) {
        throw new NoRestoreToAbandonError(
          `job ${job} has no job record, so there is no restore to abandon (received --job ${job}); pass the job the replay restores into (its --as-job id, if it had one) and the backend options it used`,
        );
      }
      resumed = current.abandoning !== undefined;
      if (resumed) return undefined; // an interrupted abandon: finish it
      if (current.restore === undefined) {
        throw new NoRestoreToAbandonError(
          `job ${job} has no restore in progress: it runs generation ${current.generation} (${current.state})${
            current.restoredFrom === undefined
              ? ''
              : `, restored from savepoint ${current.restoredFrom.savepointId} at ${new Date(current.restoredFrom.at).toISOString()}`
          }; there is nothing to abandon`,
        );
      }
      const { version: _v, updatedAt: _u, restore, ...rest } = current;
      return { ...rest, abandoning: { ...restore, startedAt: now() } };
    },
    now,
  );
  const abandoning = marked!.abandoning!;
  const discarded = await backend.scope(job, abandoning.generation).discard();
  let record: JobRecord | undefined;
  let laterJob: JobRecord | undefined;
  let nextGeneration = marked!.nextGeneration;
  for (let attempt = 0; ; attempt++) {
    const { record: current, freed } = await backend.jobs.lookup(job);
    // Gone, or another rerun of the abandon finished first; a record past the abandoned
    // generation was started since by another command (a later job of a freed id, a replay).
    if (current?.abandoning?.generation !== abandoning.generation) {
      if (current !== undefined && current.generation > abandoning.generation) laterJob = current;
      else record = current;
      nextGeneration = current?.nextGeneration ?? freed?.nextGeneration ?? nextGeneration;
      break;
    }
    if (current.state === 'restoring') {
      // Removed, leaving the id's next generation (JobStore.delete): a later job of the id
      // starts past the abandoned generation, where a restore process still running may write.
      if (await backend.jobs.delete(current)) {
        nextGeneration = current.nextGeneration;
        break;
      }
    } else {
      const { version, updatedAt: _u, abandoning: _a, ...rest } = current;
      record = { ...rest, version: version + 1, updatedAt: now() };
      nextGeneration = record.nextGeneration;
      if (await backend.jobs.put(record, version)) break;
    }
    if (attempt >= 20) {
      throw new JobRecordConflictError(
        `the record of job ${job} kept changing while the abandon was finishing; rerun 'floe replay --abandon --job ${job}'`,
      );
    }
    await new Promise((resolve) => setTimeout(resolve, 5 + Math.random() * 20 * (attempt + 1)));
  }
  return {
    job,
    savepointId: abandoning.savepointId,
    generation: abandoning.generation,
    record,
    nextGeneration,
    discarded,
    resumed,
    ...(laterJob === undefined ? {} : { laterJob }),
  };
}

// ---- replay from a timestamp ----------------------------------------------------------------------

/**
 * Prepares a job to read its stream from a timestamp (AT_TIMESTAMP) with empty state: a new
 * job, or a new generation of an existing one. Run it afterwards as usual.
 */
export async function prepareTimestampReplay(
  backend: Pick<SavepointBackend, 'jobs' | 'scope'>,
  options: {
    readonly job: string;
    readonly stream: string;
    readonly timestamp: number;
    readonly plan: PipelinePlan;
    readonly pipeline?: SavepointPipeline;
    readonly now?: () => number;
    /** As RestoreOptions.commandArgs. */
    readonly commandArgs?: string;
  },
): Promise<JobRecord> {
  const now = options.now ?? Date.now;
  if (!Number.isFinite(options.timestamp)) {
    throw new ConfigurationError(`a replay timestamp is epoch milliseconds; received ${options.timestamp}`);
  }
  const startPosition: StartPosition = { type: 'AT_TIMESTAMP', timestamp: options.timestamp };
  const base = {
    stream: options.stream,
    pipeline: options.pipeline ?? { name: options.plan.name, version: options.plan.version },
    operators: operatorSchemas(options.plan),
    startPosition,
  };
  const record = await updateJob(
    backend.jobs,
    options.job,
    async (current, freed) => {
      if (current === undefined) {
        const generation = firstGeneration(freed);
        if (!(await backend.scope(options.job, generation).isEmpty())) {
          throw new ConfigurationError(
            `job ${options.job} has state but no job record (it was run by an older floe); replay as another job id`,
          );
        }
        return {
          job: options.job,
          generation,
          nextGeneration: generation + 1,
          state: 'running',
          ...base,
        };
      }
      if (current.abandoning !== undefined)
        throw unfinishedAbandon(current, abandonArgs(options.job, options.commandArgs));
      if (current.state === 'restoring') {
        throw new ConfigurationError(
          `job ${options.job} is being restored from savepoint ${current.restore?.savepointId ?? '?'}; complete that replay first (or give it up: 'floe replay --abandon ${abandonArgs(options.job, options.commandArgs ?? '')}')`,
        );
      }
      if (current.stream !== options.stream) {
        throw new ConfigurationError(
          `job ${options.job} reads stream "${current.stream}", not "${options.stream}"; choose another job id`,
        );
      }
      const { version: _v, updatedAt: _u, stoppedBy: _b, restoredFrom: _f, savepoint: _s, ...rest } = current;
      return {
        ...rest,
        ...base,
        state: 'running',
        generation: current.nextGeneration,
        nextGeneration: current.nextGeneration + 1,
      };
    },
    now,
  );
  return record!;
}

/** Checkpoint serialization equality (for idempotent checkpoint imports). */
export function sameCheckpoint(a: ShardCheckpoint, b: ShardCheckpoint): boolean {
  return serializeCheckpoint(a) === serializeCheckpoint(b);
}
