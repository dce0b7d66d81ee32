// Runs the floe CLI (`node bin/floe.js`) as a child process in tests and collects its output and exit.
import { type ChildProcess, spawn } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { expect } from 'vitest';

/** The repository root (the children's working directory). */
export const ROOT = resolve(dirname(fileURLToPath(import.meta.url)), '../../..');
const BIN = join(ROOT, 'bin/floe.js');

export interface Exit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface Child {
  readonly process: ChildProcess;
  readonly exit: Promise<Exit>;
}

/** Children still running (a failed assertion may leave one behind): see killRunningCli. */
const running = new Set<ChildProcess>();

/**
 * Starts `floe ...args` with FLOE_DEBUG cleared and `env` over the test's environment; stdin is
 * closed, stdout and stderr are collected.
 */
export function startCli(args: readonly string[], env: Record<string, string> = {}): Child {
  const child = spawn(process.execPath, [BIN, ...args], {
    cwd: ROOT,
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, FLOE_DEBUG: '', ...env },
  });
  running.add(child);
  let stdout = '';
  let stderr = '';
  child.stdout?.setEncoding('utf8').on('data', (chunk: string) => {
    stdout += chunk;
  });
  child.stderr?.setEncoding('utf8').on('data', (chunk: string) => {
    stderr += chunk;
  });
  const exit = new Promise<Exit>((resolveExit, reject) => {
    child.once('error', reject);
    child.once('close', (code, signal) => {
      running.delete(child);
      resolveExit({ code, signal, stdout, stderr });
    });
  });
  return { process: child, exit };
}

/** Runs `floe ...args` to its exit (see startCli). */
export function runCli(args: readonly string[], env: Record<string, string> = {}): Promise<Exit> {
  return startCli(args, env).exit;
}

/** SIGKILLs every child still running (for afterAll). */
export function killRunningCli(): void {
  for (const child of running) child.kill('SIGKILL');
}

/**
 * Expects the CLI to have failed with exit `code` and one `floe: …` line on stderr (no stack
 * trace) matching `pattern`; stdout must be empty unless `stdout: 'any'` (simulate prints the
 * outputs of the lines before a bad one).
 */
export function expectOneLineError(
  result: Exit,
  code: number,
  pattern?: RegExp,
  options: { readonly stdout?: 'empty' | 'any' } = {},
): void {
  const detail = `exit ${result.code} (${result.signal})\nstdout: ${result.stdout}\nstderr: ${result.stderr}`;
  expect(result.stderr, detail).not.toContain('    at ');
  expect(result.code, detail).toBe(code);
  const lines = result.stderr.replace(/\n$/, '').split('\n');
  expect(lines, detail).toHaveLength(1);
  expect(lines[0], detail).toMatch(/^floe: \S/);
  if (pattern !== undefined) expect(lines[0], detail).toMatch(pattern);
  if (options.stdout !== 'any') expect(result.stdout, detail).toBe('');
}
