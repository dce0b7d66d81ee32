/** `floe produce --backend aws` as a real child process against the emulators. */
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DescribeStreamSummaryCommand, ResourceNotFoundException } from '@aws-sdk/client-kinesis';
import { afterAll, describe, expect, it } from 'vitest';
import { clickRecords } from '../../lib/cli/produce.ts';
import { floeCli, NO_CREDENTIALS } from '../aws/floe-cli.ts';
import { awsClients, setupAwsTestEnv, uniqueName } from '../env/aws-clients.ts';
import { createTestStream, deleteTestStream, readStreamRecords } from '../env/kinesis-streams.ts';

const env = await setupAwsTestEnv();
const clients = awsClients(env);
const dir = mkdtempSync(join(tmpdir(), 'floe-produce-aws-'));
const streams: string[] = [];
afterAll(async () => {
  for (const stream of streams) await deleteTestStream(clients.kinesis, stream);
  clients.destroy();
  rmSync(dir, { recursive: true, force: true });
});

const floe = floeCli(env);

/**
 * Data strings per partition key, in order; event times made relative to the earliest (the
 * generated history ends at the time it is generated).
 */
function perKey(records: readonly { partitionKey: string; data: string }[]): Map<string, string[]> {
  const parse = (data: string): { ts: number } | undefined => {
    try {
      return JSON.parse(data) as { ts: number };
    } catch {
      return undefined; // an invalid (--poison) record: kept as it is
    }
  };
  const earliest = Math.min(...records.map((r) => parse(r.data)?.ts ?? Number.POSITIVE_INFINITY));
  const byKey = new Map<string, string[]>();
  for (const r of records) {
    const click = parse(r.data);
    const data = click === undefined ? r.data : JSON.stringify({ ...click, ts: click.ts - earliest });
    byKey.set(r.partitionKey, [...(byKey.get(r.partitionKey) ?? []), data]);
  }
  return byKey;
}

describe('floe produce --backend aws', () => {
  it('puts the seeded clickstream into the stream it creates: the same records as the embedded backend, in order per key', async () => {
    const stream = uniqueName('produce');
    streams.push(stream);
    const args = ['--events', '1500', '--users', '30', '--pages', '5', '--seed', '7', '--poison', '2'];
    const r = floe([
      'produce',
      '--backend',
      'aws',
      '--create-resources',
      '--shards',
      '2',
      '--stream',
      stream,
      '--generate',
      'clickstream',
      ...args,
    ]);
    expect(r.stderr).toMatch(
      new RegExp(
        `^floe produce: 1,502 records \\([\\d,]+ bytes\\) put to Kinesis stream "${stream}" in 4 PutRecords requests, 0 records retried$`,
        'm',
      ),
    );
    expect(r.code).toBe(0);
    const read = await readStreamRecords(clients.kinesis, stream);
    expect(read).toHaveLength(1502);
    const expected = [
      ...clickRecords({
        events: 1500,
        rate: 200,
        users: 30,
        pages: 5,
        outOfOrder: 0.05,
        late: 0.005,
        seed: 7,
        partitionKey: 'user',
        poison: 2,
        start: Date.now(),
      }),
    ].map((record) => ({ partitionKey: record.partitionKey, data: record.data as string }));
    // Every key's records, in the order produced (a key's records are on one shard).
    const actual = perKey(read);
    expect(actual.size).toBe(30);
    expect(actual).toEqual(perKey(expected));
  });

  it('names a missing stream and the region in one line, without creating it', async () => {
    const stream = uniqueName('nope');
    const r = floe([
      'produce',
      '--backend',
      'aws',
      '--stream',
      stream,
      '--generate',
      'clickstream',
      '--events',
      '10',
    ]);
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(
      new RegExp(`^floe: missing Kinesis stream "${stream}" in region us-east-1; .*--create-resources`),
    );
    await expect(
      clients.kinesis.send(new DescribeStreamSummaryCommand({ StreamName: stream })),
    ).rejects.toThrow(ResourceNotFoundException);
  });

  it('says when no credentials are configured, in one line', () => {
    const r = floe(
      ['produce', '--backend', 'aws', '--stream', 's', '--generate', 'clickstream', '--events', '10'],
      NO_CREDENTIALS,
    );
    expect(r.code).toBe(1);
    expect(r.stderr.trim().split('\n')).toHaveLength(1);
    expect(r.stderr).toMatch(/^floe: no AWS credentials found/);
  });

  it('refuses a file with an invalid line, or an arrival time, before putting anything', async () => {
    const stream = await createTestStream(clients.kinesis, 'produce-file', 1);
    streams.push(stream);
    const invalid = join(dir, 'invalid.ndjson');
    writeFileSync(
      invalid,
      [
        '{"partitionKey": "a", "data": {"n": 1}}',
        '{"partitionKey": "a", "data": {"n": 2}}',
        '{"partitionKey": "a", "data": {',
      ].join('\n'),
    );
    const bad = floe(['produce', '--backend', 'aws', '--stream', stream, '--file', invalid]);
    expect(bad.code).toBe(1);
    expect(bad.stderr).toMatch(/^floe: line 3: not valid JSON/);

    const arrival = join(dir, 'arrival.ndjson');
    writeFileSync(
      arrival,
      [
        '{"partitionKey": "a", "data": {"n": 1}}',
        '{"partitionKey": "a", "data": {"n": 2}, "arrival": 1767225600000}',
      ].join('\n'),
    );
    const refused = floe(['produce', '--backend', 'aws', '--stream', stream, '--file', arrival]);
    expect(refused.code).toBe(1);
    expect(refused.stderr).toMatch(/^floe: line 2: "arrival" cannot be set on Kinesis/);
    expect(await readStreamRecords(clients.kinesis, stream)).toEqual([]);

    // The same file without the bad line goes in, in order.
    const good = join(dir, 'good.ndjson');
    writeFileSync(
      good,
      ['{"partitionKey": "a", "data": {"n": 1}}', '{"partitionKey": "b", "data": {"n": 2}}', ''].join('\n'),
    );
    const ok = floe(['produce', '--backend', 'aws', '--stream', stream, '--file', good]);
    expect(ok.stderr).toMatch(/^floe produce: 2 records .* in 1 PutRecords requests, 0 records retried$/m);
    expect(ok.code).toBe(0);
    expect(await readStreamRecords(clients.kinesis, stream)).toEqual([
      { partitionKey: 'a', data: '{"n":1}' },
      { partitionKey: 'b', data: '{"n":2}' },
    ]);
  });

  it('refuses the embedded-only options on aws, and --create-resources on embedded (usage errors)', () => {
    const base = ['produce', '--stream', 's', '--generate', 'clickstream'];
    for (const [extra, message] of [
      [['--backend', 'aws', '--data-dir', dir], /^floe: --data-dir is for the embedded backend/],
      [
        ['--backend', 'aws', '--retention-hours', '48'],
        /^floe: --retention-hours applies to the embedded backend/,
      ],
      [
        ['--backend', 'aws', '--shards', '2'],
        /^floe: --shards is the shard count of a stream that --create-resources creates/,
      ],
      [['--create-resources'], /^floe: --create-resources applies to --backend aws only/],
    ] as const) {
      const r = floe([...base, ...extra]);
      expect(r.stderr, extra.join(' ')).toMatch(message);
      expect(r.code).toBe(2);
    }
  });
});
