// The small page-view job the AWS CLI tests run: 300 views of three pages, and its `floe run` arguments.
import type { KinesisClient } from '@aws-sdk/client-kinesis';
import { putRecords } from '../../lib/aws/kinesis-source.ts';

/** When the sample's first view happened; the views are one second apart. */
export const SAMPLE_START = Date.UTC(2026, 0, 1);

/**
 * Puts 300 page views (pages /p0../p2, users u0..u299, one per second of event time from
 * SAMPLE_START, so 5 minutes) on `stream`, partitioned by page.
 */
export async function putSamplePageViews(kinesis: KinesisClient, stream: string): Promise<void> {
  const events = Array.from({ length: 300 }, (_, i) => ({
    page: `/p${i % 3}`,
    user: `u${i}`,
    ts: SAMPLE_START + i * 1000,
  }));
  await putRecords(
    kinesis,
    stream,
    events.map((e) => ({ partitionKey: e.page, data: new TextEncoder().encode(JSON.stringify(e)) })),
  );
}

/** `floe run` of examples/page-views.ts on the AWS backend until idle, creating its resources. */
export function samplePageViewsRunArgs(job: string, stream: string): string[] {
  return [
    'run',
    'examples/page-views.ts',
    '--backend',
    'aws',
    '--job',
    job,
    '--stream',
    stream,
    '--create-resources',
    '--until-idle',
    '--progress',
    'none',
  ];
}
