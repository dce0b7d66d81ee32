import { afterEach, describe, expect, it, vi } from 'vitest';
import { UsageError } from './args.ts';
import { openSavepointBackend, progressPrinter } from './savepoint-backend.ts';

afterEach(() => vi.restoreAllMocks());

/** The lines progressPrinter writes to stderr (not a terminal in the test workers). */
function printed(run: (p: ReturnType<typeof progressPrinter>) => void): string[] {
  const lines: string[] = [];
  vi.spyOn(process.stderr, 'write').mockImplementation((chunk) => {
    lines.push(String(chunk).trimEnd());
    return true;
  });
  const printer = progressPrinter(false);
  run(printer);
  printer.done();
  vi.restoreAllMocks();
  return lines;
}

describe('savepoint progress', () => {
  it('draws no bar for an export of unknown size (the AWS export), only the counts', () => {
    const lines = printed((p) => {
      p.onProgress({ phase: 'export', entries: 0, total: undefined, files: 0 });
      p.onProgress({ phase: 'export', entries: 50_000, total: undefined, files: 1 });
    });
    expect(lines).toEqual(['exporting 0 entries, 0 file(s)', 'exporting 50,000 entries, 1 file(s)']);
  });

  it('draws the fraction done when the total is known', () => {
    const lines = printed((p) => {
      p.onProgress({ phase: 'restore', entries: 0, total: 200, files: 0 });
      p.onProgress({ phase: 'restore', entries: 100, total: 200, files: 1 });
    });
    expect(lines.at(-1)).toMatch(/^restoring \[#+\.+\]\s+50% 100\/200 entries, 1 file\(s\)$/);
  });
});

describe('openSavepointBackend', () => {
  it('--backend aws without --job or all three resources is a usage error (exit 2), naming what to pass', async () => {
    for (const values of [{ backend: 'aws' }, { backend: 'aws', 'state-table': 't', bucket: 'b' }]) {
      const opened = openSavepointBackend(values, undefined, 'savepoints');
      await expect(opened).rejects.toBeInstanceOf(UsageError);
      await expect(opened).rejects.toThrow(
        /^on the aws backend, pass --job <id> \(its default resources: floe-<job>-state, floe-<job>-control, bucket floe-<job>\) or --state-table, --control-table and --bucket$/,
      );
    }
  });
});
