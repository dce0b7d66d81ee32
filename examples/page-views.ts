/**
 * Page views per page in 1-minute tumbling event-time windows, tolerating 5 s of
 * out-of-orderness and accepting late events for 30 s more (each re-fires its window).
 * Partition the stream by page so every view of a page reaches one shard.
 */
import {
  boundedOutOfOrderness,
  count,
  minutes,
  pipeline,
  seconds,
  tumbling,
  withIdleness,
} from '../lib/core/index.ts';

export interface PageView {
  readonly page: string;
  readonly user: string;
  /** Event time, epoch milliseconds. */
  readonly ts: number;
}

export interface PageViewCount {
  readonly page: string;
  readonly windowStart: number;
  readonly windowEnd: number;
  readonly views: number;
}

const p = pipeline('page-views');

p.source<PageView>()
  .withTimestamps((view) => view.ts, withIdleness(boundedOutOfOrderness(seconds(5)), minutes(1)))
  .keyBy((view) => view.page)
  .window(tumbling({ size: minutes(1) }))
  .allowedLateness(seconds(30))
  .sideOutputLateData('late-page-views')
  .uid('page-view-counts')
  .aggregate(
    count<PageView>(),
    ({ key, window, result }): PageViewCount => ({
      page: key,
      windowStart: window.start,
      windowEnd: window.end,
      views: result,
    }),
  )
  .sink('page-view-counts');

export default p;
