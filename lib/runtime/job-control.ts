/**
 * The job record: one per job, in the backend's control store (a SQLite table, a DynamoDB
 * control item). It says which state generation is current, where shards without a checkpoint
 * start, and whether the job runs, is pausing for a savepoint, is stopped, or is being restored.
 * Workers read it between batches (JobControl) and stop at a commit boundary when they should
 * not run; `floe run` reads it to find the generation to run. Writes are compare-and-set on
 * `version`.
 */
import {
  ConfigurationError,
  compareOperatorSchemas,
  type OperatorSchema,
  type SavepointPipeline,
  type StartPosition,
  TerminalError,
} from '../core/index.ts';

export type JobState = 'running' | 'pausing' | 'stopped' | 'restoring';

/** A savepoint in progress: workers pause while `expiresAt` is in the future. */
export interface SavepointInProgress {
  readonly id: string;
  readonly owner: string;
  readonly startedAt: number;
  /** The savepoint process renews it; once past, workers resume (the savepoint was interrupted). */
  readonly expiresAt: number;
  readonly stop: boolean;
}

/** A restore in progress into `generation` (of this job). A rerun continues it. */
export interface RestoreInProgress {
  readonly savepointId: string;
  readonly generation: number;
  readonly startedAt: number;
}

/**
 * A restore that `floe replay --abandon` gave up (abandonRestore): set when the abandon removes
 * `restore`, cleared (or, for a job the restore created, the record deleted) once the abandoned
 * generation's partial state is deleted. A rerun of the abandon finishes an interrupted one.
 */
export interface AbandonInProgress {
  readonly savepointId: string;
  readonly generation: number;
  readonly startedAt: number;
}

export interface JobRecord {
  readonly job: string;
  /** The current state generation. */
  readonly generation: number;
  /** The smallest generation never used by this job (a restore takes it). */
  readonly nextGeneration: number;
  readonly state: JobState;
  readonly stream: string;
  readonly pipeline?: SavepointPipeline;
  /** The state layout of the pipeline last run (copied into savepoints). */
  readonly operators?: readonly OperatorSchema[];
  /** Where shards without a checkpoint in the current generation start. @default TRIM_HORIZON */
  readonly startPosition?: StartPosition;
  readonly savepoint?: SavepointInProgress;
  readonly restore?: RestoreInProgress;
  readonly abandoning?: AbandonInProgress;
  readonly stoppedBy?: { readonly savepointId: string; readonly at: number };
  readonly restoredFrom?: { readonly savepointId: string; readonly at: number };
  /** Incremented on every write (compare-and-set). */
  readonly version: number;
  readonly updatedAt: number;
}

/** What `floe status --json` shows of a job record, on both backends (docs/cli.md). */
export interface JobRecordSummary {
  readonly state: JobState;
  readonly generation: number;
  readonly stream: string;
  readonly pipeline?: SavepointPipeline;
  readonly startPosition?: StartPosition;
  readonly savepoint?: { readonly id: string; readonly owner: string; readonly expiresAt: number };
  readonly stoppedBy?: { readonly savepointId: string; readonly at: number };
  readonly restoredFrom?: { readonly savepointId: string; readonly at: number };
  readonly restore?: { readonly savepointId: string; readonly generation: number };
  readonly updatedAt: number;
}

/** The record without its bookkeeping (version, next generation, state layout, progress details). */
export function jobRecordSummary(record: JobRecord): JobRecordSummary {
  return {
    state: record.state,
    generation: record.generation,
    stream: record.stream,
    ...(record.pipeline === undefined ? {} : { pipeline: record.pipeline }),
    ...(record.startPosition === undefined ? {} : { startPosition: record.startPosition }),
    ...(record.savepoint === undefined
      ? {}
      : {
          savepoint: {
            id: record.savepoint.id,
            owner: record.savepoint.owner,
            expiresAt: record.savepoint.expiresAt,
          },
        }),
    ...(record.stoppedBy === undefined ? {} : { stoppedBy: record.stoppedBy }),
    ...(record.restoredFrom === undefined ? {} : { restoredFrom: record.restoredFrom }),
    ...(record.restore === undefined
      ? {}
      : { restore: { savepointId: record.restore.savepointId, generation: record.restore.generation } }),
    updatedAt: record.updatedAt,
  };
}

/**
 * What a removed job record leaves in its place (JobStore.delete): the id has no job — every
 * reader of records (JobStore.get, restoresFrom, listings) sees none, and it can be used again —
 * but a later job of that id starts past the removed one's generations (firstGeneration).
 *
 * Why: a record is removed when `floe replay --abandon` gives up a restore that had created the
 * job (a replay --as-job). On DynamoDB, a restore process suspended in the middle of a batch of
 * state entries (after its check of the record; the entries are conditional puts that cannot
 * check it) may write the rest of that batch after the abandon deleted the generation: those
 * entries must never become the state of a later job of the id, so no later job uses that
 * generation. (A ConditionCheck of the record in a transaction with every batch would close it
 * too, but doubles the write cost of a restore, and transactions that include the same item (the
 * record) at the same time can conflict, which would serialize its batches.)
 */
export interface FreedJob {
  readonly job: string;
  /** The removed record's `nextGeneration`: every generation it may have written is below. */
  readonly nextGeneration: number;
  /**
   * The removed record's version + 1. A later record of the id continues from it, so that a
   * compare-and-set that read the removed record can never succeed on the later one.
   */
  readonly version: number;
}

/** A job id as stored (one read): its record, or without one, what a removed record left. */
export interface JobLookup {
  readonly record: JobRecord | undefined;
  /** Only when there is no record: what a removed record of the id left (delete), if any. */
  readonly freed: FreedJob | undefined;
}

/** Where job records live. */
export interface JobStore {
  /** The job's record; undefined when the id has none (never had one, or it was removed). */
  get(job: string): Promise<JobRecord | undefined>;
  /**
   * The record, or without one, what a removed one left (one read): for whatever creates a
   * record, or runs a job without one.
   */
  lookup(job: string): Promise<JobLookup>;
  /**
   * Writes the record if the stored version is `expectedVersion`: the record's, or when the id
   * has no record, that of what a removed one left (JobLookup.freed), which the record replaces
   * (undefined: neither is stored). Returns false (and writes nothing) when another writer got
   * there first.
   */
  put(record: JobRecord, expectedVersion: number | undefined): Promise<boolean>;
  /**
   * Removes `record` if its stored version is `record.version`, leaving in the same write what
   * lookup() returns as `freed`: `nextGeneration` of the record, version `record.version + 1`.
   * Returns false (and changes nothing) when another writer changed it, or it is gone.
   */
  delete(record: JobRecord): Promise<boolean>;
  /**
   * The records with a restore in progress from savepoint `savepointId` (`restore.savepointId`),
   * whatever their job id: `floe savepoint delete` refuses to delete a savepoint such a restore
   * still reads (a rerun of the replay must find it, or the job stays `restoring`).
   */
  restoresFrom(savepointId: string): Promise<JobRecord[]>;
}

/** Another process changed the job record in between, repeatedly. */
export class JobRecordConflictError extends TerminalError {
  readonly code = 'JOB_RECORD_CONFLICT';
}

/**
 * Reads the record, applies `change` and writes it back with compare-and-set, retrying when
 * another writer changed it in between. `change` returns the new record (without version),
 * or undefined to write nothing. Returns the stored record.
 */
export async function updateJob(
  store: JobStore,
  job: string,
  change: (
    current: JobRecord | undefined,
    /** Without a record: what a removed one left, if any (a new record starts at firstGeneration). */
    freed: FreedJob | undefined,
  ) =>
    | Omit<JobRecord, 'version' | 'updatedAt'>
    | undefined
    | Promise<Omit<JobRecord, 'version' | 'updatedAt'> | undefined>,
  now: () => number = Date.now,
): Promise<JobRecord | undefined> {
  for (let attempt = 0; attempt < 20; attempt++) {
    const { record: current, freed } = await store.lookup(job);
    const next = await change(current, freed);
    if (next === undefined) return current;
    const stored = current?.version ?? freed?.version;
    const record: JobRecord = { ...next, version: (stored ?? 0) + 1, updatedAt: now() };
    if (await store.put(record, stored)) return record;
    await new Promise((resolve) => setTimeout(resolve, 5 + Math.random() * 20 * (attempt + 1)));
  }
  throw new JobRecordConflictError(
    `the record of job ${job} kept changing while it was being updated; retry the command`,
  );
}

/**
 * The generation a job without a record runs, or a new record of it starts at: `configured` (a
 * Lambda job's deployed generation; 0 by default), but never one a removed record of the id may
 * have written (`freed`).
 */
export function firstGeneration(freed: FreedJob | undefined, configured = 0): number {
  return Math.max(configured, freed?.nextGeneration ?? 0);
}

/** The generation a job runs: its record's, or without a record, firstGeneration. */
export function generationOf(found: JobLookup, configured = 0): number {
  return found.record?.generation ?? firstGeneration(found.freed, configured);
}

/**
 * What refuses to start anything on a job whose abandoned restore was not cleaned up yet
 * (`floe replay --abandon` was interrupted): rerunning the abandon finishes it. `abandonArgs`:
 * what the suggested command takes after `--abandon` (`--job <id>` and the backend options);
 * when the caller does not know the backend options, the message asks for them in words.
 */
export function unfinishedAbandon(
  record: Pick<JobRecord, 'job' | 'abandoning'>,
  abandonArgs?: string,
): ConfigurationError {
  const a = record.abandoning;
  const rerun =
    abandonArgs === undefined
      ? `'floe replay --abandon --job ${record.job}' (with the same backend options)`
      : `'floe replay --abandon ${abandonArgs}'`;
  return new ConfigurationError(
    `job ${record.job}: the restore of savepoint ${a?.savepointId ?? '?'} into generation ${a?.generation ?? '?'} was abandoned, but the abandon stopped before it had deleted what the restore wrote; rerun ${rerun} to finish it`,
  );
}

/** The job id in output ids: generation 0 keeps the plain job id (`job/shard/commit/index`). */
export function outputJobId(job: string, generation: number): string {
  return generation === 0 ? job : `${job}@${generation}`;
}

// ---- what workers do ----------------------------------------------------------------------------

export type ControlDecision =
  | { readonly action: 'run' }
  /** Stop at the commit boundary and wait: a savepoint is being taken. */
  | { readonly action: 'pause'; readonly reason: string }
  /** Stop for good: the job was stopped, or restored into another generation. */
  | { readonly action: 'stop'; readonly reason: string };

/** Read by workers between batches and by the runner between rounds. */
export interface JobControl {
  check(): Promise<ControlDecision>;
}

/** What a worker of `generation` should do, given the job record. */
export function decide(record: JobRecord | undefined, generation: number, now: number): ControlDecision {
  if (record === undefined) return { action: 'run' };
  if (record.generation !== generation) {
    return {
      action: 'stop',
      reason: `job ${record.job} now runs state generation ${record.generation}${record.restoredFrom ? ` (restored from savepoint ${record.restoredFrom.savepointId})` : ''}; this worker ran generation ${generation}`,
    };
  }
  switch (record.state) {
    case 'stopped':
      return {
        action: 'stop',
        reason: `job ${record.job} was stopped${record.stoppedBy ? ` with savepoint ${record.stoppedBy.savepointId}` : ''}`,
      };
    case 'restoring':
      return { action: 'stop', reason: `job ${record.job} is being restored from a savepoint` };
    case 'pausing':
      if (record.savepoint !== undefined && record.savepoint.expiresAt > now) {
        return { action: 'pause', reason: `savepoint ${record.savepoint.id} is being taken` };
      }
      return { action: 'run' }; // the savepoint was interrupted: keep processing
    default:
      return { action: 'run' };
  }
}

export function jobControl(
  store: JobStore,
  job: string,
  generation: number,
  now: () => number = Date.now,
): JobControl {
  return { check: async () => decide(await store.get(job), generation, now()) };
}

// ---- floe run -----------------------------------------------------------------------------------

export interface JobToRun {
  readonly record: JobRecord;
  readonly generation: number;
  readonly startPosition: StartPosition | undefined;
  readonly control: JobControl;
}

/**
 * Finds (or creates) the job record before `floe run`: the generation to run and where new
 * shards start. Refuses, saying why and what to do, a stopped job, a job whose restore has not
 * completed, and a job of another stream. Records the pipeline being run (module and state
 * layout) so savepoints can describe it.
 */
export async function resolveJobForRun(
  store: JobStore,
  options: {
    readonly job: string;
    readonly stream: string;
    readonly pipeline: SavepointPipeline;
    readonly operators: readonly OperatorSchema[];
    /**
     * The generation a job without a record runs (a Lambda job deployed with the construct's
     * `generation`: its workers run it until a record names another). @default 0
     */
    readonly generation?: number;
    /**
     * The options that select this job, its backend and resources (e.g. `--backend aws --job x`,
     * --job included), added to the `floe replay` commands the refusals suggest.
     * @default `--job <job>` where a command needs it (the embedded defaults)
     */
    readonly commandArgs?: string;
    readonly now?: () => number;
  },
): Promise<JobToRun> {
  const now = options.now ?? Date.now;
  const initialGeneration = options.generation ?? 0;
  const args = options.commandArgs ? ` ${options.commandArgs}` : '';
  const jobArgs = options.commandArgs ?? `--job ${options.job}`;
  const record = await updateJob(
    store,
    options.job,
    (current, freed) => {
      if (current === undefined) {
        const generation = firstGeneration(freed, initialGeneration);
        return {
          job: options.job,
          generation,
          nextGeneration: generation + 1,
          state: 'running',
          stream: options.stream,
          pipeline: options.pipeline,
          operators: options.operators,
        };
      }
      if (current.stream !== options.stream) {
        throw new ConfigurationError(
          `job ${options.job} reads stream "${current.stream}", not "${options.stream}"; its checkpoints are positions in "${current.stream}". Run it with --stream ${current.stream}, or give this run another --job id`,
        );
      }
      if (current.state === 'stopped') {
        throw new ConfigurationError(
          `job ${options.job} was stopped${current.stoppedBy ? ` with savepoint ${current.stoppedBy.savepointId} at ${new Date(current.stoppedBy.at).toISOString()}` : ''}; resume it with 'floe replay --from-savepoint ${current.stoppedBy?.savepointId ?? '<id>'}${args}'`,
        );
      }
      if (current.state === 'restoring') {
        if (current.restore === undefined && current.abandoning !== undefined)
          throw unfinishedAbandon(current, jobArgs);
        throw new ConfigurationError(
          `job ${options.job} is being restored from savepoint ${current.restore?.savepointId ?? '?'} and the restore has not completed; rerun the 'floe replay' command that started it (it continues where it stopped), or give it up with 'floe replay --abandon ${jobArgs}'`,
        );
      }
      checkStateLayout(current, options.pipeline.name, options.operators);
      const { version: _v, updatedAt: _u, ...rest } = current;
      return { ...rest, pipeline: options.pipeline, operators: options.operators };
    },
    now,
  );
  const stored = record!;
  return {
    record: stored,
    generation: stored.generation,
    startPosition: stored.startPosition,
    control: jobControl(store, options.job, stored.generation, now),
  };
}

/**
 * Refuses to run pipeline `name` (its `operators`) on the state of the job's current generation
 * when that state was written in a layout the pipeline would misread: an operator or state of
 * another kind, a TTL added or removed (TTL state stores write times beside the values), a
 * session window turned aligned, or an operator gone (its state and timers would be orphaned).
 * A savepoint restore checks the same (checkCompatibility) and can migrate; a running job cannot.
 */
export function checkStateLayout(
  record: Pick<JobRecord, 'job' | 'operators'>,
  name: string,
  operators: readonly OperatorSchema[],
): void {
  if (record.operators === undefined) return;
  const report = compareOperatorSchemas(record.operators, operators, name, {
    savedIn: `job ${record.job}'s stored state`,
  });
  const fatal = report.issues.filter((i) => i.fatal);
  if (fatal.length === 0) return;
  throw new ConfigurationError(
    `pipeline "${name}" cannot run on the state job ${record.job} holds: ${fatal.map((i) => i.message).join('; ')}. A job keeps its state layout while it runs. To change it, take a savepoint and replay it into the job (floe savepoint create, then floe replay --from-savepoint <id>, with a migration if needed: docs/savepoints.md), or run the new pipeline as another job (--job <new id>).`,
  );
}

/**
 * Refuses to show a job's status against a stream it does not read (`floe status --stream`), as
 * resolveJobForRun refuses to run it: its checkpoints are positions in its own stream.
 */
export function checkStatusStream(
  record: Pick<JobRecord, 'job' | 'stream'> | undefined,
  stream: string | undefined,
): void {
  if (record === undefined || stream === undefined || record.stream === stream) return;
  throw new ConfigurationError(
    `job ${record.job} reads stream "${record.stream}", not "${stream}"; its checkpoints are positions in "${record.stream}". Leave out --stream, or pass --stream ${record.stream}`,
  );
}

/** In-memory JobStore (tests, simulate). */
export class MemoryJobStore implements JobStore {
  private readonly records = new Map<string, string>();
  private readonly removed = new Map<string, FreedJob>();
  async get(job: string): Promise<JobRecord | undefined> {
    const text = this.records.get(job);
    return text === undefined ? undefined : (JSON.parse(text) as JobRecord);
  }
  async lookup(job: string): Promise<JobLookup> {
    const record = await this.get(job);
    return { record, freed: record === undefined ? this.removed.get(job) : undefined };
  }
  async put(record: JobRecord, expectedVersion: number | undefined): Promise<boolean> {
    const found = await this.lookup(record.job);
    const stored = found.record?.version ?? found.freed?.version;
    if (stored !== expectedVersion) return false;
    this.records.set(record.job, JSON.stringify(record));
    this.removed.delete(record.job);
    return true;
  }
  async delete(record: JobRecord): Promise<boolean> {
    if ((await this.get(record.job))?.version !== record.version) return false;
    this.records.delete(record.job);
    this.removed.set(record.job, {
      job: record.job,
      nextGeneration: record.nextGeneration,
      version: record.version + 1,
    });
    return true;
  }
  async restoresFrom(savepointId: string): Promise<JobRecord[]> {
    return [...this.records.values()]
      .map((text) => JSON.parse(text) as JobRecord)
      .filter((r) => r.restore?.savepointId === savepointId);
  }
}
