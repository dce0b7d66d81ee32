/**
 * A keyed process function: flag a card used in 3 or more countries within 10 minutes of
 * event time. Keeps the card's recent uses in MapState and cleans them up with timers.
 * Partition the stream by card number.
 */
import {
  boundedOutOfOrderness,
  mapState,
  minutes,
  pipeline,
  processFunction,
  seconds,
  valueState,
} from '../lib/core/index.ts';

export interface CardUse {
  readonly card: string;
  readonly country: string;
  readonly amount: number;
  readonly ts: number;
}

export interface FraudAlert {
  readonly card: string;
  readonly countries: string[];
  readonly at: number;
}

const WINDOW = minutes(10);

export const detectFraud = processFunction<CardUse, FraudAlert>()({
  state: {
    /** Latest use time per country within the last 10 minutes. */
    lastSeen: mapState<string, number>(),
    /** Time of the last alert, so one burst raises one alert. */
    alertedAt: valueState<number>(),
  },
  processElement(use, ctx) {
    const { lastSeen, alertedAt } = ctx.state;
    if ((lastSeen.get(use.country) ?? Number.NEGATIVE_INFINITY) < use.ts) lastSeen.put(use.country, use.ts);
    // Forget this use once it is older than the window.
    ctx.timers.registerEventTimeTimer(use.ts + WINDOW);
    const recent = lastSeen.entries().filter(([, t]) => t > use.ts - WINDOW && t <= use.ts + WINDOW);
    const last = alertedAt.value();
    if (recent.length >= 3 && (last === undefined || use.ts - last >= WINDOW)) {
      alertedAt.update(use.ts);
      ctx.emit({ card: use.card, countries: recent.map(([c]) => c).sort(), at: use.ts });
    }
  },
  onTimer(timer, ctx) {
    const { lastSeen, alertedAt } = ctx.state;
    for (const [country, t] of lastSeen.entries()) if (t + WINDOW <= timer.time) lastSeen.remove(country);
    const last = alertedAt.value();
    if (last !== undefined && last + WINDOW <= timer.time) alertedAt.clear();
  },
});

const p = pipeline('card-fraud');

p.source<CardUse>()
  .withTimestamps((u) => u.ts, boundedOutOfOrderness(seconds(10)))
  .keyBy((u) => u.card)
  .process(detectFraud, { uid: 'card-fraud' })
  .sink('fraud-alerts');

export default p;
