/** Helpers for the embedded savepoint tests: a data dir with a clicks stream, runs, outputs. */
import { mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  compile,
  type Pipeline,
  type ShardReader,
  type ShardSource,
  type StartPosition,
} from '../../core/index.ts';
import { runJob } from '../../runtime/local-runner.ts';
import { databasePath } from '../job.ts';
import { LocalLog } from '../local-log.ts';
import { openEmbeddedJobForRun } from '../run-job.ts';
import { embeddedSavepointBackend } from '../savepoints.ts';
import { outputTableName } from '../sinks.ts';
import { openSqlite, type SqliteDatabase } from '../sqlite.ts';
import type { Click } from './savepoint-pipelines.ts';

export const STREAM = 'clicks';

export interface DataDir {
  readonly dir: string;
  readonly db: SqliteDatabase;
  readonly log: LocalLog;
  close(): void;
}

export async function dataDir(
  root: string,
  options: { shards?: number; retentionMs?: number; clock?: () => number } = {},
): Promise<DataDir> {
  const dir = mkdtempSync(join(root, 'data-'));
  const db = openSqlite(databasePath(dir));
  const log = new LocalLog(db, options.clock === undefined ? {} : { clock: options.clock });
  await log.createStream(STREAM, {
    shards: options.shards ?? 3,
    retentionMs: options.retentionMs ?? Number.POSITIVE_INFINITY,
  });
  return { dir, db, log, close: () => db.close() };
}

export const tmpRoot = (): string => mkdtempSync(join(tmpdir(), 'floe-savepoint-'));

/** Appends clicks with arrival times `arrival0 + index` (partition key: the user). */
export async function produce(
  log: LocalLog,
  clicks: readonly Click[],
  arrival0 = 1_767_261_600_000,
): Promise<void> {
  for (let i = 0; i < clicks.length; i += 500) {
    await log.append(
      STREAM,
      clicks.slice(i, i + 500).map((c, j) => ({
        partitionKey: c.user,
        data: JSON.stringify(c),
        arrivalTime: arrival0 + i + j,
      })),
    );
  }
}

export function backendOf(data: DataDir, options: { savepointDir?: string; clock?: () => number } = {}) {
  return embeddedSavepointBackend({
    db: data.db,
    savepoints: options.savepointDir ?? join(data.dir, 'savepoints'),
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  });
}

/** A source whose reads take `delayMs` (so a savepoint can be taken mid-run). */
function slowSource(source: ShardSource, delayMs: number): ShardSource {
  return {
    listShards: () => source.listShards(),
    async openReader(shardId: string, position: StartPosition): Promise<ShardReader> {
      const reader = await source.openReader(shardId, position);
      return {
        async read(limit) {
          await new Promise((resolve) => setTimeout(resolve, delayMs));
          return reader.read(limit);
        },
        close: () => reader.close?.() ?? Promise.resolve(),
      };
    },
  };
}

/** Runs a job the way `floe run` does (through its job record) until every shard is caught up. */
export async function runUntilIdle(
  data: DataDir,
  job: string,
  pipeline: Pipeline,
  options: {
    batchSize?: number;
    readDelayMs?: number;
    signal?: AbortSignal;
    untilIdle?: boolean;
    /** The local log's (and the job's processing-time) clock. */
    clock?: () => number;
    /** WorkerOptions.timerTailOps (small: timer chunks are written, deleted and compacted). */
    timerTailOps?: number;
  } = {},
): Promise<{ records: number; stopped?: string }> {
  const opened = await openEmbeddedJobForRun({
    dataDir: data.dir,
    stream: STREAM,
    job,
    plan: compile(pipeline),
    ...(options.clock === undefined ? {} : { clock: options.clock }),
  });
  try {
    const runtime =
      options.readDelayMs === undefined
        ? opened.runtime
        : { ...opened.runtime, source: slowSource(opened.runtime.source, options.readDelayMs) };
    const summary = await runJob(runtime, {
      untilIdle: options.untilIdle ?? true,
      batchSize: options.batchSize ?? 100,
      leaseTtlMs: 5_000,
      idlePollMs: 20,
      roundPauseMs: 50,
      controlPollMs: 20,
      ...(options.signal === undefined ? {} : { signal: options.signal }),
      ...(options.timerTailOps === undefined ? {} : { timerTailOps: options.timerTailOps }),
    });
    return {
      records: summary.records,
      ...(summary.stopped === undefined ? {} : { stopped: summary.stopped }),
    };
  } finally {
    await opened.close();
  }
}

export interface PublishedOutput {
  readonly id: string;
  readonly sink: string;
  readonly value: Record<string, unknown>;
  readonly job: string;
  readonly shard: string;
  readonly commit: number;
  readonly index: number;
}

/** The published outputs of a job (all generations), in (shard, commit, index) order. */
export function outputsOf(db: SqliteDatabase, job: string): PublishedOutput[] {
  const table = outputTableName(job);
  const exists = db.prepare('SELECT 1 FROM sqlite_master WHERE type = ? AND name = ?').get('table', table);
  if (exists === undefined) return [];
  const rows = db.prepare(`SELECT id, sink, value FROM "${table}"`).all() as Array<{
    id: string;
    sink: string;
    value: string;
  }>;
  return rows
    .map((r) => {
      const parts = r.id.split('/');
      return {
        id: r.id,
        sink: r.sink,
        value: JSON.parse(r.value) as Record<string, unknown>,
        job: parts[0]!,
        shard: parts[1]!,
        commit: Number(parts[2]),
        index: Number(parts[3]),
      };
    })
    .sort((a, b) =>
      a.shard !== b.shard ? (a.shard < b.shard ? -1 : 1) : a.commit - b.commit || a.index - b.index,
    );
}

/** Per shard, the output values in order (optionally only those after a commit number per shard). */
export function valuesByShard(
  outputs: readonly PublishedOutput[],
  after?: ReadonlyMap<string, number>,
): Record<string, Array<{ sink: string; value: unknown }>> {
  const out: Record<string, Array<{ sink: string; value: unknown }>> = {};
  for (const o of outputs) {
    if (after !== undefined && o.commit <= (after.get(o.shard) ?? -1)) continue;
    const list = out[o.shard] ?? [];
    list.push({ sink: o.sink, value: o.value });
    out[o.shard] = list;
  }
  return out;
}

export function countRows(db: SqliteDatabase, sql: string, ...params: unknown[]): number {
  return (db.prepare(sql).get(...params) as { n: number }).n;
}
