/**
 * The files the floe commands read and write (`--input`, `--file`, `--output`, pipeline and
 * migration modules), with one clear line for every way opening them can fail: missing, a
 * directory, no such directory (usage errors, exit 2), unreadable.
 */
import { createReadStream, type Stats, statSync } from 'node:fs';
import { open } from 'node:fs/promises';
import { dirname, join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { ConfigurationError } from '../core/index.ts';
import { UsageError } from './args.ts';

function statOf(path: string): Stats | undefined {
  try {
    return statSync(path);
  } catch {
    return undefined;
  }
}

function errnoMessage(error: unknown): string {
  const e = error as NodeJS.ErrnoException;
  if (e?.code === 'EACCES' || e?.code === 'EPERM') return 'permission denied';
  return e?.message ?? String(error);
}

/**
 * Refuses an input path (`--input`, `--file`) that does not exist or is a directory: a usage
 * error (exit 2), as such an `--output` is. `-` (stdin) passes.
 */
export function checkInputPath(path: string, flag: string): void {
  if (path === '-') return;
  const stats = statOf(path);
  if (stats === undefined) {
    throw new UsageError(`input file not found: ${path} (${flag}); check the path, or pass - for stdin`);
  }
  if (stats.isDirectory()) {
    throw new UsageError(`${flag} ${path} is a directory; pass an NDJSON file (or - for stdin)`);
  }
}

/**
 * Refuses a module path (a pipeline or migration module) that does not exist or is a directory:
 * a usage error (exit 2). `what` names it ("pipeline module", "--migration module").
 */
export function checkModulePath(path: string, what: string): void {
  const absolute = resolve(path);
  const stats = statOf(absolute);
  if (stats === undefined) {
    throw new UsageError(`${what} not found: ${path} (resolved to ${absolute}); check the path`);
  }
  if (stats.isDirectory()) {
    throw new UsageError(`${what} ${path} is a directory; pass the path of the module's .ts file`);
  }
}

/**
 * Opens an input file (or stdin for `-`) and resolves once it is open: a missing file or a
 * directory is a usage error (checkInputPath), an unreadable file a ConfigurationError, each
 * naming the flag and the path.
 */
async function openInput(path: string, flag: string): Promise<Readable> {
  if (path === '-') return process.stdin;
  checkInputPath(path, flag);
  const input = createReadStream(path);
  await new Promise<void>((resolve, reject) => {
    input.once('open', () => resolve());
    input.once('error', (error) =>
      reject(new ConfigurationError(`cannot read ${flag} ${path}: ${errnoMessage(error)}`)),
    );
  });
  return input;
}

/**
 * The lines of an input file (or stdin for `-`), without a UTF-8 byte order mark at the start.
 * Resolves once the file is open, so a missing one fails before anything else happens.
 */
export async function inputLines(path: string, flag: string): Promise<AsyncIterable<string>> {
  const input = await openInput(path, flag);
  return (async function* lines() {
    let first = true;
    try {
      for await (const line of createInterface({ input, crlfDelay: Number.POSITIVE_INFINITY })) {
        yield first ? line.replace(/^\uFEFF/, '') : line;
        first = false;
      }
    } catch (error) {
      if (error instanceof ConfigurationError) throw error;
      throw new ConfigurationError(`cannot read ${flag} ${path}: ${errnoMessage(error)}`);
    } finally {
      if (input !== process.stdin) input.destroy();
    }
  })();
}

/** An output file being written; `close` flushes it and reports a write error. */
export interface OutputFile {
  write(text: string): void;
  close(): Promise<void>;
}

/**
 * Refuses an output path that is a directory, or whose directory does not exist: usage errors
 * (exit 2), as an output that is the input file is. Commands call it before they start,
 * openOutput again when it opens the file.
 */
export function checkOutputPath(path: string, flag: string): void {
  if (path === '') throw new UsageError(`${flag} needs a file path; received ""`);
  if (statOf(path)?.isDirectory()) {
    throw new UsageError(
      `${flag} ${path} is a directory; pass a file path, e.g. ${join(path, 'out.ndjson')}`,
    );
  }
  const parent = dirname(path);
  const parentStats = statOf(parent);
  if (parentStats === undefined || !parentStats.isDirectory()) {
    throw new UsageError(
      `cannot write ${flag} ${path}: ${parentStats === undefined ? 'there is no directory' : 'not a directory:'} ${parent}; create it first or pass another path`,
    );
  }
}

/**
 * Creates (or truncates) an output file. Refuses a directory, a file in a directory that does
 * not exist (checkOutputPath) and `inputPath` itself (which truncating would destroy) before touching anything.
 */
export async function openOutput(path: string, flag: string, inputPath?: string): Promise<OutputFile> {
  checkOutputPath(path, flag);
  const stats = statOf(path);
  if (stats !== undefined && inputPath !== undefined && inputPath !== '-') {
    const input = statOf(inputPath);
    if (input !== undefined && input.dev === stats.dev && input.ino === stats.ino) {
      throw new UsageError(
        `${flag} ${path} is the input file; writing it would destroy the input. Pass another path`,
      );
    }
  }
  let handle: Awaited<ReturnType<typeof open>>;
  try {
    handle = await open(path, 'w');
  } catch (error) {
    throw new ConfigurationError(`cannot write ${flag} ${path}: ${errnoMessage(error)}`);
  }
  const stream = handle.createWriteStream();
  let failed: unknown;
  stream.on('error', (error) => {
    failed ??= error;
  });
  return {
    write(text) {
      if (failed === undefined) stream.write(text);
    },
    async close() {
      // 'close' comes after 'error': resolving on 'finish' (end's callback) could miss a
      // failed write (ENOSPC, EIO) reported just after it.
      await new Promise<void>((resolve) => {
        if (stream.destroyed) resolve();
        else {
          stream.once('close', () => resolve());
          stream.end();
        }
      });
      if (failed !== undefined)
        throw new ConfigurationError(`cannot write ${flag} ${path}: ${errnoMessage(failed)}`);
    },
  };
}
