/**
 * `floe simulate` as a user runs it (child processes of `node bin/floe.js`): the script's
 * contract (one kind of line, known fields only, a BOM skipped), the input and output files,
 * the shard limit, and the `floe/core` import docs/dsl.md shows.
 */
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import pageViews from '../../examples/page-views.ts';
import { type Output, pipeline } from '../core/index.ts';
import { parseScriptLine, simulate, simulateOutputLine } from '../runtime/simulate.ts';
import {
  type Exit,
  expectOneLineError as expectOneLine,
  killRunningCli,
  ROOT,
  runCli,
} from './testing/run-cli.ts';

const TMP = mkdtempSync(join(tmpdir(), 'floe-simulate-test-'));
afterAll(() => {
  killRunningCli();
  rmSync(TMP, { recursive: true, force: true });
});

const floe = (...args: string[]): Promise<Exit> => runCli(args);
const INPUT = join(ROOT, 'examples/data/page-views.ndjson');

const expectOneLineError = (result: Exit, code: number, pattern: RegExp): void =>
  expectOneLine(result, code, pattern, { stdout: 'any' });

function file(name: string, text: string): string {
  const path = join(TMP, name);
  writeFileSync(path, text);
  return path;
}

describe('simulate script lines: one kind per line, known fields only', () => {
  const error = (line: string): string => {
    try {
      parseScriptLine(line, 7);
    } catch (e) {
      return (e as Error).message;
    }
    throw new Error(`accepted: ${line}`);
  };

  it('refuses an unknown (misspelt) field, naming the line, the field and the allowed fields', () => {
    expect(error('{"partitionKey":"/home","data":{},"shrad":3}')).toBe(
      'line 7: unknown field "shrad" (misspelt?); a record has only "partitionKey", "data" or "raw", "shard" and "arrival"',
    );
    expect(error('{"watermark":5,"sharde":1}')).toMatch(
      /^line 7: unknown field "sharde" .*a watermark line has only "watermark" and "shard"$/,
    );
    expect(error('{"processingTime":5,"shard":1}')).toMatch(/unknown field "shard"/);
    expect(error('{"restart":true,"x":1,"y":2}')).toMatch(/unknown fields "x", "y"/);
  });

  it('refuses a line that mixes a record and a control line, or two control lines', () => {
    for (const line of [
      '{"watermark":5000,"partitionKey":"/home","data":{}}',
      '{"restart":true,"partitionKey":"a","data":1}',
      '{"processingTime":5,"watermark":7}',
    ]) {
      expect(error(line)).toMatch(/^line 7: mixes .* and .*; a line is one of .*, on a line of its own$/);
    }
    expect(error('{"processingTime":5,"watermark":7}')).toMatch(
      /mixes "watermark" \(a watermark line\) and "processingTime" \(a processingTime line\)/,
    );
  });

  it('refuses a record with both "data" and "raw"', () => {
    expect(error('{"partitionKey":"/home","raw":"{}","data":{}}')).toBe(
      'line 7: a record has "data" (any JSON) or "raw" (a string payload), not both',
    );
    expect(error('{"partitionKey":"/home","raw":5}')).toMatch(/"raw" must be a string .*received 5/);
  });

  it('says what it received for a bad value', () => {
    expect(error('{"restart": false}')).toBe('line 7: "restart" must be true; received false');
    expect(error('{"restart":"true"}')).toBe('line 7: "restart" must be true; received "true"');
    expect(error('{"processingTime":"x"}')).toBe(
      `line 7: "processingTime" must be whole epoch milliseconds within ±8640000000000000 (a Date's range); received "x"`,
    );
    for (const arrival of ['"x"', '1e400', '-1e20']) {
      expect(error(`{"partitionKey":"a","data":1,"arrival":${arrival}}`)).toMatch(
        /^line 7: "arrival" must be whole epoch milliseconds within ±8640000000000000 \(a Date's range\); received /,
      );
    }
    expect(error('{"watermark":null}')).toMatch(
      /"watermark" must be whole epoch milliseconds .*received null/,
    );
    expect(error('{"partitionKey":"","data":1}')).toMatch(
      /"partitionKey" string of 1 to 256 characters, as Kinesis; received ""/,
    );
    expect(error(`{"partitionKey":"${'k'.repeat(257)}","data":1}`)).toMatch(/of 1 to 256 characters/);
    expect(error('{"processingTime":1e999}')).toMatch(
      /"processingTime" must be whole epoch milliseconds within/,
    );
    expect(error('{"shard":1}')).toMatch(/^line 7: a line is one of .*; received \{"shard":1\}$/);
  });

  it('takes whole milliseconds for times: a fraction or a time out of range names the line and the value', () => {
    expect(error('{"watermark":1.5}')).toBe(
      'line 7: "watermark" must be whole epoch milliseconds within ±8840000000000000 (the range of timers; --end-of-input advances every shard to +Infinity); received 1.5',
    );
    for (const watermark of ['1e400', '-1e400', '1e300', '8840000000000001']) {
      expect(error(`{"watermark":${watermark}}`)).toMatch(
        /^line 7: "watermark" must be whole epoch milliseconds/,
      );
    }
    expect(error('{"processingTime":2.5}')).toMatch(
      /^line 7: "processingTime" must be whole epoch milliseconds within .*; received 2\.5$/,
    );
    expect(error('{"partitionKey":"a","data":1,"arrival":0.5}')).toMatch(
      /^line 7: "arrival" must be whole epoch milliseconds within .*; received 0\.5$/,
    );
    // The same number written otherwise in JSON is the same number.
    expect(parseScriptLine('{"watermark":1e3}', 1)).toEqual({
      kind: 'watermark',
      watermark: 1000,
      shard: undefined,
    });
    expect(parseScriptLine('{"watermark":-8840000000000000}', 1)).toMatchObject({ watermark: -8.84e15 });
    expect(parseScriptLine('{"processingTime":5.0}', 1)).toEqual({ kind: 'processingTime', time: 5 });
  });

  it('accepts every form of the README', () => {
    expect(parseScriptLine('{"partitionKey":"k","data":null,"shard":1,"arrival":5}', 1)).toMatchObject({
      kind: 'record',
      record: { partitionKey: 'k', shard: 'shardId-000000000001', arrival: 5 },
    });
    expect(parseScriptLine('{"partitionKey":"k","raw":"{x"}', 1)?.kind).toBe('record');
    expect(parseScriptLine('{"watermark":5,"shard":"shardId-000000000000"}', 1)).toEqual({
      kind: 'watermark',
      watermark: 5,
      shard: 'shardId-000000000000',
    });
    expect(parseScriptLine('{"processingTime":5}', 1)).toEqual({ kind: 'processingTime', time: 5 });
    expect(parseScriptLine('{"restart":true}', 1)).toEqual({ kind: 'restart' });
    expect(parseScriptLine('   ', 1)).toBeUndefined();
  });

  it('skips a UTF-8 BOM at the start of the input; one elsewhere is named as a BOM', async () => {
    const lines = readFileSync(INPUT, 'utf8').split('\n');
    const plain: Output[] = [];
    await simulate(pageViews, lines, { onOutput: (o) => plain.push(o) });
    const withBom: Output[] = [];
    await simulate(pageViews, [`\uFEFF${lines[0]}`, ...lines.slice(1)], { onOutput: (o) => withBom.push(o) });
    expect(withBom).toEqual(plain);
    expect(() => parseScriptLine('\uFEFF{"restart":true}', 3)).toThrow(
      /^line 3: starts with a UTF-8 byte order mark/,
    );
  });

  it('refuses the records of one key on two shards, as floe run does, instead of counting them apart', async () => {
    const view = (ts: number, shard: number) =>
      JSON.stringify({ partitionKey: '/a', data: { page: '/a', ts }, shard });
    const outputs: Output[] = [];
    const run = (lines: string[]) =>
      simulate(pageViews, lines, { shards: 2, endOfInput: true, onOutput: (o) => outputs.push(o) });
    // Three views of /a: two on shard 0, one on shard 1, whose own copy of /a's window says 1.
    await expect(run([view(1000, 0), view(2000, 1), view(3000, 0)])).rejects.toThrow(
      /^lines 1-3: records of one key reached two shards, which floe run refuses too \(a record's "shard" sends it to that shard, whatever its partition key; .*keyed state entry page-view-counts\/"\/a" was written by shard shardId-000000000000 and now by shard shardId-000000000001/,
    );
    await expect(run(['{"watermark":0}', view(1000, 0), '{"watermark":1}', view(2000, 1)])).rejects.toThrow(
      /^line 4: records of one key reached two shards/,
    );
    // One shard per key is fine, whichever shard it is.
    outputs.length = 0;
    await run([view(1000, 1), view(2000, 1), view(3000, 1)]);
    expect(outputs.map((o) => (o.value as { views: number }).views)).toEqual([3]);
  });

  it('an unknown shard on a watermark line lists the shards, as on a record line', async () => {
    const run = (line: string) => simulate(pageViews, [line], { shards: 2, onOutput: () => {} });
    const shards =
      'with --shards 2 the shards are shardId-000000000000, shardId-000000000001 (or their indexes 0 to 1)';
    await expect(run('{"watermark":5,"shard":7}')).rejects.toThrow(
      `line 1: unknown shard "shardId-000000000007"; ${shards}`,
    );
    await expect(run('{"partitionKey":"a","data":1,"shard":"s"}')).rejects.toThrow(
      `line 1: unknown shard "s"; ${shards}`,
    );
  });

  it('through the CLI: exit 1 and one line naming the line', async () => {
    const script = file(
      'typo.ndjson',
      '{"partitionKey":"/home","data":{"page":"/home","ts":1}}\n\n{"partitionKey":"/home","data":{},"shrad":3}\n',
    );
    expectOneLineError(
      await floe('simulate', 'examples/page-views.ts', '-i', script),
      1,
      /^floe: line 3: unknown field "shrad"/,
    );
    const bom = file('bom.ndjson', `\uFEFF${readFileSync(INPUT, 'utf8')}`);
    const fromBom = await floe('simulate', 'examples/page-views.ts', '-i', bom);
    expect(fromBom.stderr).toBe('');
    expect(fromBom.stdout).toBe((await floe('simulate', 'examples/page-views.ts', '-i', INPUT)).stdout);
  });
});

describe('simulate output lines', () => {
  it('always have "sink" and "value": an undefined element is written as null, as JSON has no undefined', async () => {
    const p = pipeline('maybe');
    p.source<{ x?: number }>()
      .map((e) => e.x)
      .sink('out');
    const lines: string[] = [];
    await simulate(p, ['{"partitionKey":"a","data":{"x":1}}', '{"partitionKey":"a","data":{}}'], {
      onOutput: (o) => lines.push(simulateOutputLine(o)),
    });
    expect(lines).toEqual(['{"sink":"out","value":1}', '{"sink":"out","value":null}']);
    expect(simulateOutputLine({ id: 'j/s/1/0', sink: 'out', value: { a: undefined, b: [undefined] } })).toBe(
      '{"sink":"out","value":{"b":[null]}}',
    );
  });
});

describe('simulate files and flags', () => {
  it('--shards above 1024 is a usage error naming the flag and the limit', async () => {
    expectOneLineError(
      await floe('simulate', 'examples/page-views.ts', '-i', INPUT, '--shards', '99999999'),
      2,
      /^floe: --shards must be a whole number from 1 to 1024; received "99999999"$/,
    );
    const ok = await floe('simulate', 'examples/page-views.ts', '-i', INPUT, '--shards', '1024');
    expect(ok.code, ok.stderr).toBe(0);
  });

  it('an --output in a directory that does not exist is a usage error (exit 2), refused before the input is opened', async () => {
    expectOneLineError(
      await floe(
        'simulate',
        'examples/page-views.ts',
        '-i',
        INPUT,
        '--output',
        join(TMP, 'no/such/dir/out.ndjson'),
      ),
      2,
      /^floe: cannot write --output .*no\/such\/dir\/out\.ndjson: there is no directory .*no\/such\/dir; create it first/,
    );
    expectOneLineError(
      await floe(
        'simulate',
        'examples/page-views.ts',
        '-i',
        join(TMP, 'none.ndjson'),
        '-o',
        join(TMP, 'no/out.ndjson'),
      ),
      2,
      /^floe: cannot write --output .*no\/out\.ndjson: there is no directory/,
    );
  });

  it('an --output that is a directory is a usage error (exit 2), refused before the input is opened', async () => {
    expectOneLineError(
      await floe('simulate', 'examples/page-views.ts', '-i', INPUT, '-o', TMP),
      2,
      /^floe: --output .* is a directory; pass a file path, e\.g\. .*out\.ndjson$/,
    );
    expectOneLineError(
      await floe('simulate', 'examples/page-views.ts', '-i', join(TMP, 'none.ndjson'), '-o', TMP),
      2,
      /^floe: --output .* is a directory; pass a file path/,
    );
  });

  it('an empty --output is a usage error (exit 2) naming the flag', async () => {
    expectOneLineError(
      await floe('simulate', 'examples/page-views.ts', '-i', INPUT, '-o', ''),
      2,
      /^floe: --output needs a file path; received ""$/,
    );
  });

  it.skipIf(!existsSync('/dev/full'))(
    'a failed write to --output (a full disk) is an error (exit 1), not a success',
    async () => {
      expectOneLineError(
        await floe('simulate', 'examples/page-views.ts', '-i', INPUT, '-o', '/dev/full'),
        1,
        /^floe: cannot write --output \/dev\/full: ENOSPC/,
      );
    },
  );

  it('an --input that is a directory is a usage error (exit 2) that says so', async () => {
    expectOneLineError(
      await floe('simulate', 'examples/page-views.ts', '-i', TMP),
      2,
      /^floe: --input .* is a directory; pass an NDJSON file \(or - for stdin\)$/,
    );
  });

  it('a missing input leaves an existing --output file untouched; --output cannot be the input', async () => {
    const out = file('keep.ndjson', 'previous results\n');
    expectOneLineError(
      await floe('simulate', 'examples/page-views.ts', '-i', join(TMP, 'none.ndjson'), '-o', out),
      2,
      /input file not found: .*none\.ndjson/,
    );
    expect(readFileSync(out, 'utf8')).toBe('previous results\n');
    const script = file('script.ndjson', readFileSync(INPUT, 'utf8'));
    expectOneLineError(
      await floe('simulate', 'examples/page-views.ts', '-i', script, '-o', script),
      2,
      /^floe: --output .*script\.ndjson is the input file/,
    );
    expect(readFileSync(script, 'utf8')).toBe(readFileSync(INPUT, 'utf8'));
  });

  it('after an error on line N, --output holds what stdout shows: the outputs of the lines before it', async () => {
    const lines = readFileSync(INPUT, 'utf8').trimEnd().split('\n');
    // The error comes right after records still waiting to be sent (lines 5 and 6).
    const script = file(
      'broken.ndjson',
      `${lines.slice(0, 6).join('\n')}\n{"restart": false}\n${lines.slice(6).join('\n')}\n`,
    );
    const toStdout = await floe('simulate', 'examples/page-views.ts', '-i', script);
    expectOneLineError(
      { ...toStdout, stdout: '' },
      1,
      /^floe: line 7: "restart" must be true; received false$/,
    );
    // /home's first window fires again with the late view of line 6 (the README's third output).
    expect(toStdout.stdout.trimEnd().split('\n')).toHaveLength(3);
    const out = join(TMP, 'broken-out.ndjson');
    const toFile = await floe('simulate', 'examples/page-views.ts', '-i', script, '-o', out);
    expectOneLineError(toFile, 1, /^floe: line 7: "restart" must be true/);
    expect(readFileSync(out, 'utf8')).toBe(toStdout.stdout);
  });

  it("docs/dsl.md's first snippet runs as written: `floe/core` resolves inside this repository", async () => {
    const dsl = readFileSync(join(ROOT, 'docs/dsl.md'), 'utf8');
    const snippet = /```ts\n([\s\S]*?)```/.exec(dsl)![1]!;
    expect(snippet).toContain("from 'floe/core';");
    // Under the repository (the package "floe"), where Node's package self-reference applies.
    const dir = join(ROOT, '.floe', `test-dsl-snippet-${process.pid}`);
    mkdirSync(dir, { recursive: true });
    try {
      const module = join(dir, 'pipeline.ts');
      writeFileSync(module, `${snippet}\ninterface PageView { page: string; user: string; ts: number }\n`);
      const result = await floe('simulate', module, '-i', INPUT, '--end-of-input');
      expect(result.stderr).toBe('');
      expect(result.code).toBe(0);
      // The snippet counts the README's page views: /home's first minute ends with 3.
      expect(result.stdout).toMatch(
        /^\{"sink":"page-view-counts","value":\{"page":"\/home",.*"views":3\}\}$/m,
      );
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
