/**
 * User sessions: a session closes after 30 minutes without activity. Emits one summary per
 * session with its span, event count and distinct pages. Partition the stream by user id.
 */
import {
  type AggregateFunction,
  boundedOutOfOrderness,
  minutes,
  pipeline,
  seconds,
  session,
  withIdleness,
} from '../lib/core/index.ts';

export interface ClickEvent {
  readonly user: string;
  readonly page: string;
  readonly ts: number;
}

export interface SessionSummary {
  readonly user: string;
  readonly start: number;
  readonly end: number;
  readonly events: number;
  readonly pages: number;
}

interface SessionAcc {
  events: number;
  pages: string[];
}

/** Counts events and distinct pages; merge() combines sessions bridged by a new event. */
const sessionStats: AggregateFunction<ClickEvent, SessionAcc, { events: number; pages: number }> = {
  create: () => ({ events: 0, pages: [] }),
  add: (e, acc) => ({
    events: acc.events + 1,
    pages: acc.pages.includes(e.page) ? acc.pages : [...acc.pages, e.page].sort(),
  }),
  merge: (a, b) => ({
    events: a.events + b.events,
    pages: [...new Set([...a.pages, ...b.pages])].sort(),
  }),
  result: (acc) => ({ events: acc.events, pages: acc.pages.length }),
};

const p = pipeline('user-sessions');

p.source<ClickEvent>()
  .withTimestamps((e) => e.ts, withIdleness(boundedOutOfOrderness(seconds(5)), minutes(1)))
  .keyBy((e) => e.user)
  .window(session({ gap: minutes(30) }))
  .allowedLateness(minutes(1))
  .uid('user-sessions')
  .aggregate(
    sessionStats,
    ({ key, window, result }): SessionSummary => ({
      user: key,
      start: window.start,
      end: window.end,
      events: result.events,
      pages: result.pages,
    }),
  )
  .sink('sessions');

export default p;
