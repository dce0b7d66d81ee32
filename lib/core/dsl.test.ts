/** DSL validation: every invalid pipeline fails with a PipelineDefinitionError that says how to fix it. */
import { describe, expect, it } from 'vitest';
import { type AggregateFunction, count } from './aggregates.ts';
import { compile } from './compile.ts';
import { DEAD_LETTER_SINK, DEFAULT_LATE_SINK, type Pipeline, pipeline } from './dsl.ts';
import { PipelineDefinitionError } from './errors.ts';
import type { KeyedProcessFunction } from './processor.ts';
import { valueState } from './state.ts';
import { TestDriver } from './testing/test-driver.ts';
import { thrownBy } from './testing/thrown.ts';
import { minutes, seconds } from './time.ts';
import { boundedOutOfOrderness, monotonic, withIdleness } from './watermarks.ts';
import { session, sliding, tumbling } from './windows.ts';

interface Ev {
  readonly user: string;
  readonly ts: number;
}

const passThrough: KeyedProcessFunction<Ev, Ev> = {
  processElement(e, ctx) {
    ctx.emit(e);
  },
};

/** Runs `fn`, expecting a PipelineDefinitionError whose message contains every fragment. */
function definitionError(fn: () => unknown, ...fragments: string[]): PipelineDefinitionError {
  const error = thrownBy(fn, PipelineDefinitionError);
  expect(error.code).toBe('PIPELINE_DEFINITION');
  expect(error.retryable).toBe(false);
  expect(error.name).toBe('PipelineDefinitionError');
  for (const fragment of fragments) expect(error.message).toContain(fragment);
  return error;
}

const timed = (p: Pipeline) => p.source<Ev>().withTimestamps((e) => e.ts, boundedOutOfOrderness(seconds(1)));

describe('pipeline structure', () => {
  it('rejects a pipeline without a source', () => {
    const p = pipeline('empty');
    const error = definitionError(() => compile(p), 'pipeline "empty" has no source', 'source()');
    expect(error.message).toBe('pipeline "empty" has no source: start it with pipeline(name).source()');
  });

  it('rejects a second source when it is declared', () => {
    const p = pipeline('two-sources');
    p.source<Ev>();
    definitionError(
      () => p.source<Ev>(),
      'pipeline "two-sources" already has a source',
      'Reuse the DataStream returned by the first source() call',
    );
  });

  it('rejects a pipeline without a sink', () => {
    const p = pipeline('no-sink');
    p.source<Ev>().map((e) => e.user);
    definitionError(() => compile(p), 'pipeline "no-sink" has no sink', '.sink(name)');
  });

  it('rejects two withTimestamps calls, even on different branches', () => {
    const p = pipeline('two-ts');
    const s = p.source<Ev>();
    s.withTimestamps((e) => e.ts, monotonic()).sink('a');
    s.withTimestamps((e) => e.ts, monotonic()).sink('b');
    definitionError(() => compile(p), 'pipeline "two-ts" calls withTimestamps 2 times', 'Call it once');

    const chained = pipeline('chained-ts');
    chained
      .source<Ev>()
      .withTimestamps((e) => e.ts, monotonic())
      .withTimestamps((e) => e.ts, monotonic())
      .sink('a');
    definitionError(() => compile(chained), 'calls withTimestamps 2 times');
  });

  it('rejects a window without withTimestamps', () => {
    const p = pipeline('no-event-time');
    p.source<Ev>()
      .keyBy((e) => e.user)
      .window(tumbling({ size: minutes(1) }))
      .aggregate(count())
      .sink('counts');
    definitionError(() => compile(p), 'windows need event time', 'withTimestamps(extractor');
  });

  it('accepts a process function without withTimestamps', () => {
    const p = pipeline('processing-only');
    p.source<Ev>()
      .keyBy((e) => e.user)
      .process(passThrough)
      .sink('out');
    expect(compile(p).strategy).toBeUndefined();
  });

  it('rejects keyBy after a process operator', () => {
    const p = pipeline('rekey');
    p.source<Ev>()
      .keyBy((e) => e.user)
      .process(passThrough)
      .keyBy((e) => e.ts)
      .process(passThrough)
      .sink('out');
    definitionError(
      () => compile(p),
      'keyBy after a window or process operator would need a repartition stage',
      'Key the stream once',
    );
  });

  it('rejects keyBy after a window operator, even behind a map', () => {
    const p = pipeline('rekey-window');
    timed(p)
      .keyBy((e) => e.user)
      .window(tumbling({ size: minutes(1) }))
      .aggregate(count())
      .map((r) => ({ user: String(r.key), ts: r.window.end }))
      .keyBy((e) => e.user)
      .process(passThrough)
      .sink('out');
    definitionError(() => compile(p), 'keyBy after a window or process operator');
  });

  it('rejects duplicate explicit uids', () => {
    const p = pipeline('dup');
    const keyed = timed(p).keyBy((e) => e.user);
    keyed.process(passThrough, { uid: 'enrich' }).sink('a');
    keyed
      .window(tumbling({ size: minutes(1) }))
      .uid('enrich')
      .aggregate(count())
      .sink('b');
    definitionError(() => compile(p), 'pipeline "dup": two operators have the uid "enrich"');
  });

  it('rejects an explicit uid colliding with a default one', () => {
    const p = pipeline('dup-default');
    const keyed = p.source<Ev>().keyBy((e) => e.user);
    keyed.process(passThrough).sink('a');
    keyed.process(passThrough).uid('process-0').sink('b');
    definitionError(() => compile(p), 'two operators have the uid "process-0"');
  });

  it('reserves uids starting with "floe." (floe keeps its timer chunks under them)', () => {
    const keyed = () =>
      pipeline('reserved-uid')
        .source<Ev>()
        .keyBy((e) => e.user);
    const message =
      'operator uid "floe.timers" is reserved: uids starting with "floe." are floe\'s own; choose another uid';
    definitionError(() => keyed().process(passThrough, { uid: 'floe.timers' }), message);
    definitionError(() => keyed().process(passThrough).uid('floe.timers'), message);
    definitionError(
      () =>
        keyed()
          .window(tumbling({ size: minutes(1) }))
          .uid('floe.timers'),
      message,
    );
  });

  it('reserves the dead-letter sink name', () => {
    const p = pipeline('reserved');
    expect(DEAD_LETTER_SINK).toBe('floe.dead-letter');
    definitionError(
      () => p.source<Ev>().sink(DEAD_LETTER_SINK),
      'sink: the name "floe.dead-letter" is reserved for dead letters',
      'choose a name that does not start with "floe."',
    );
  });

  it('rejects consuming the same side output twice', () => {
    const p = pipeline('side-twice');
    const processed = p
      .source<Ev>()
      .keyBy((e) => e.user)
      .process(passThrough);
    processed.sink('out');
    processed.sideOutput('alerts').sink('a');
    processed.sideOutput('alerts').sink('b');
    definitionError(() => compile(p), 'side output "alerts" of operator "process-0" is consumed twice');
  });

  it('offers lateData() only on window results', () => {
    const p = pipeline('late');
    const processed = p
      .source<Ev>()
      .keyBy((e) => e.user)
      .process(passThrough);
    definitionError(
      // @ts-expect-error a process function has no late data (the compiler says so too)
      () => processed.lateData(),
      'lateData() is only available on the result of a window aggregation',
    );
  });
});

describe('argument validation', () => {
  it('rejects non-function arguments with what was received', () => {
    const p = pipeline('args');
    const s = p.source<Ev>();
    const bad = 42 as unknown as (e: Ev) => string;
    definitionError(() => s.map(bad), 'map needs a function; received 42');
    definitionError(() => s.filter(bad as unknown as (e: Ev) => boolean), 'filter needs a function');
    definitionError(() => s.flatMap(bad as unknown as (e: Ev) => string[]), 'flatMap needs a function');
    definitionError(() => s.keyBy(bad), 'keyBy needs a function');
    definitionError(
      () => s.withTimestamps(bad as unknown as (e: Ev) => number, monotonic()),
      'withTimestamps needs a function',
    );
    definitionError(
      () => s.withTimestamps((e) => e.ts, undefined as unknown as ReturnType<typeof monotonic>),
      'withTimestamps needs a watermark strategy such as boundedOutOfOrderness(seconds(5)); received undefined',
    );
    definitionError(() => s.sink(''), 'sink needs a non-empty name; received ""');
    const keyed = s.keyBy((e) => e.user);
    definitionError(
      () => keyed.process({} as KeyedProcessFunction<Ev, Ev>),
      'process needs an object with a processElement(value, ctx) method; received {}',
    );
    definitionError(
      () => keyed.window({ kind: 'global' } as unknown as ReturnType<typeof tumbling>),
      'window needs tumbling(...), sliding(...) or session(...)',
    );
    definitionError(
      () =>
        keyed
          .window(tumbling({ size: 10 }))
          .aggregate({ add: () => 0 } as unknown as AggregateFunction<Ev, number, number>),
      'aggregate needs {create, add, merge?, result}',
    );
  });

  it('requires merge() for a session window aggregate', () => {
    const p = pipeline('session');
    const windowed = timed(p)
      .keyBy((e) => e.user)
      .window(session({ gap: minutes(5) }));
    const { merge: _unused, ...noMerge } = count<Ev>();
    definitionError(
      () => windowed.aggregate(noMerge),
      'session windows merge, so their aggregate needs a merge(a, b) function',
      'use reduce()',
    );
    // reduce() supplies a merge.
    expect(() => windowed.reduce((a) => a).sink('out')).not.toThrow();
    // Aligned windows do not need one.
    expect(() =>
      timed(pipeline('tumbling'))
        .keyBy((e) => e.user)
        .window(tumbling({ size: 10 }))
        .aggregate(noMerge),
    ).not.toThrow();
  });

  it.each([
    [
      'tumbling size -1',
      () => tumbling({ size: -1 }),
      'tumbling window size must be a whole number of milliseconds from 1 to 100000000000000 (about 3,170 years); received -1',
    ],
    [
      'tumbling size 0',
      () => tumbling({ size: 0 }),
      'tumbling window size must be a whole number of milliseconds from 1 to',
    ],
    ['tumbling size 1.5', () => tumbling({ size: 1.5 }), 'received 1.5. Use e.g. minutes(1).'],
    ['tumbling size NaN', () => tumbling({ size: Number.NaN }), 'received NaN'],
    [
      'tumbling offset >= size',
      () => tumbling({ size: 10, offset: 10 }),
      'tumbling window offset must be a whole number of milliseconds with |offset| < 10; received 10',
    ],
    ['tumbling offset 0.5', () => tumbling({ size: 10, offset: 0.5 }), 'received 0.5'],
    [
      'sliding size -5',
      () => sliding({ size: -5, slide: 1 }),
      'sliding window size must be a whole number of milliseconds from 1 to',
    ],
    [
      'sliding slide 2.5',
      () => sliding({ size: 10, slide: 2.5 }),
      'sliding window slide must be a whole number of milliseconds from 1 to 100000000000000 (about 3,170 years); received 2.5',
    ],
    [
      'sliding offset >= slide',
      () => sliding({ size: 10, slide: 5, offset: -5 }),
      '|offset| < 5; received -5',
    ],
    [
      'session gap 0',
      () => session({ gap: 0 }),
      'session gap must be a whole number of milliseconds from 1 to 100000000000000 (about 3,170 years); received 0',
    ],
    [
      'session gap 0.1',
      () => session({ gap: 0.1 }),
      'session gap must be a whole number of milliseconds from 1 to',
    ],
    [
      'boundedOutOfOrderness -1',
      () => boundedOutOfOrderness(-1),
      'boundedOutOfOrderness bound must be a whole number of milliseconds from 0 to 100000000000000 (about 3,170 years); received -1',
    ],
    ['boundedOutOfOrderness 0.5', () => boundedOutOfOrderness(0.5), 'received 0.5'],
    [
      'withIdleness 0',
      () => withIdleness(monotonic(), 0),
      'withIdleness timeout must be a whole number of milliseconds from 1 to 100000000000000 (about 3,170 years); received 0',
    ],
    ['withIdleness -10', () => withIdleness(monotonic(), -10), 'received -10'],
    [
      'state ttl -1',
      () => valueState({ ttl: -1 }),
      'state ttl must be a whole number of milliseconds from 1 to 100000000000000 (about 3,170 years); received -1',
    ],
    ['state ttl 1.5', () => valueState({ ttl: 1.5 }), 'received 1.5'],
    // Longer durations could take window bounds past 2^53, where doubles stop being exact.
    ['tumbling size 1e15', () => tumbling({ size: 1e15 }), 'received 1000000000000000'],
    ['boundedOutOfOrderness 2e14', () => boundedOutOfOrderness(2e14), 'received 200000000000000'],
  ])('rejects a bad duration: %s', (_name, build, message) => {
    definitionError(build, message);
  });

  it('rejects a bad allowed lateness', () => {
    const windowed = () =>
      timed(pipeline('lateness'))
        .keyBy((e) => e.user)
        .window(tumbling({ size: 10 }));
    definitionError(
      () => windowed().allowedLateness(-1),
      'allowedLateness must be a whole number of milliseconds from 0 to 100000000000000 (about 3,170 years); received -1',
    );
    definitionError(() => windowed().allowedLateness(2.5), 'received 2.5');
    expect(() => windowed().allowedLateness(0)).not.toThrow();
  });

  it.each([
    ['', 'received ""'],
    ['has space', 'received "has space"'],
    ['-leading-dash', 'received "-leading-dash"'],
    ['x'.repeat(101), 'pipeline name must be 1-100 letters'],
    ['slash/name', 'received "slash/name"'],
  ])('rejects the pipeline name %j', (name, fragment) => {
    definitionError(() => pipeline(name), 'pipeline name must be 1-100 letters, digits', fragment);
  });

  it('rejects a non-string pipeline name', () => {
    definitionError(() => pipeline(undefined as unknown as string), 'received undefined');
  });

  it('accepts names with letters, digits, dots, underscores and dashes', () => {
    expect(pipeline('Page_views.v2-eu').name).toBe('Page_views.v2-eu');
    expect(pipeline('x'.repeat(100)).name).toHaveLength(100);
    expect(pipeline('7').version).toBe('1');
    expect(pipeline('v', { version: '2024-06' }).version).toBe('2024-06');
  });
});

describe('missing or null option objects (JavaScript callers)', () => {
  const bad = <T>(value: unknown): T => value as T;

  it('refuses them with what was received instead of a TypeError', () => {
    definitionError(
      () => tumbling(bad(undefined)),
      'tumbling needs an options object, e.g. tumbling({ size: minutes(1) }); received undefined',
    );
    definitionError(() => sliding(bad(null)), 'sliding needs an options object', 'received null');
    definitionError(
      () => session(bad(undefined)),
      'session needs an options object, e.g. session({ gap: minutes(30) })',
    );
    definitionError(
      () => pipeline('p', bad(null)),
      'pipeline "p": options must be an object',
      'received null',
    );
    definitionError(
      () => pipeline('p').source(bad(null)),
      'source options must be an object',
      'received null',
    );
    const s = pipeline('p').source<Ev>();
    definitionError(
      () => s.withTimestamps((e) => e.ts, bad(null)),
      'withTimestamps needs a watermark strategy',
      'received null',
    );
    const keyed = s.keyBy((e) => e.user);
    definitionError(
      () => keyed.window(bad(null)),
      'window needs tumbling(...), sliding(...) or session(...); received null',
    );
    definitionError(
      () => keyed.process(bad<KeyedProcessFunction<Ev, Ev>>(null)),
      'process needs an object with a processElement(value, ctx) method; received null',
    );
    definitionError(
      () => keyed.process(passThrough, bad(null)),
      'process options must be an object',
      'received null',
    );
  });

  it('compile (and so a TestDriver) refuses something that is not a pipeline', () => {
    definitionError(
      () => compile(bad(undefined)),
      'compile needs a pipeline made with pipeline(name)',
      'received undefined',
    );
    definitionError(() => new TestDriver(bad({})), 'compile needs a pipeline', 'received {}');
  });

  it('checks a window assigner written by hand as the assigner functions do', async () => {
    const keyed = timed(pipeline('p')).keyBy((e) => e.user);
    definitionError(
      () => keyed.window(bad({ kind: 'tumbling', size: 0, offset: 0 })),
      'tumbling window size must be a whole number of milliseconds',
      'received 0',
    );
    definitionError(
      () => keyed.window(bad({ kind: 'session', gap: '10' })),
      'session gap must be',
      'received "10"',
    );
    // Without an offset it is the default, 0 (it assigned no window at all).
    const p = pipeline('hand-written');
    timed(p)
      .keyBy((e) => e.user)
      .window(bad({ kind: 'tumbling', size: 10 }))
      .aggregate(count())
      .sink('out');
    const driver = new TestDriver(p);
    await driver.send([{ partitionKey: 'ana', data: JSON.stringify({ user: 'ana', ts: 3 }) }]);
    await driver.advanceWatermark(Number.POSITIVE_INFINITY);
    expect(driver.values('out')).toEqual([{ key: 'ana', window: { start: 0, end: 10 }, result: 1 }]);
  });

  it('refuses unknown (misspelt) assigner options, which were ignored', () => {
    definitionError(
      () => tumbling(bad({ size: 10, ofset: 5 })),
      'tumbling options have unknown field "ofset" (misspelt?); tumbling takes "size", "offset"',
    );
    definitionError(() => sliding(bad({ size: 10, slide: 5, step: 1, x: 2 })), 'unknown fields "step", "x"');
    definitionError(() => session(bad({ gap: 10, size: 5 })), 'session takes "gap"');
    const keyed = timed(pipeline('p')).keyBy((e) => e.user);
    definitionError(
      () => keyed.window(bad({ kind: 'session', gap: 10, timeout: 5 })),
      'unknown field "timeout"',
    );
    // An assigner made by the functions passes window() as it is.
    expect(() => keyed.window(sliding({ size: 10, slide: 5, offset: 1 }))).not.toThrow();
  });

  it('refuses a version that is not a non-empty string (savepoints record it as one)', () => {
    definitionError(
      () => pipeline('p', { version: bad(2) }),
      "version must be a non-empty string, e.g. { version: '2' }; received 2",
    );
    definitionError(() => pipeline('p', { version: '' }), 'received ""');
  });
});

describe('compiled plan', () => {
  it('derives default uids per operator kind, in definition order, next to explicit ones', () => {
    const p = pipeline('uids');
    const keyed = timed(p).keyBy((e) => e.user);
    keyed
      .window(tumbling({ size: 10 }))
      .aggregate(count())
      .sink('w0');
    keyed.process(passThrough).sink('p0');
    keyed.process(passThrough, { uid: 'custom' }).sink('custom');
    keyed
      .window(sliding({ size: 20, slide: 10 }))
      .aggregate(count())
      .sink('w1');
    keyed.process(passThrough).sink('p1');
    const plan = compile(p);
    expect(plan.operators.map((o) => [o.index, o.uid, o.kind])).toEqual([
      [0, 'window-0', 'window'],
      [1, 'process-0', 'process'],
      [2, 'custom', 'process'],
      [3, 'window-1', 'window'],
      [4, 'process-1', 'process'],
    ]);
  });

  it('lists every sink, including the dead-letter sink and unconsumed late outputs', () => {
    const p = pipeline('sinks', { version: '7' });
    const keyed = timed(p).keyBy((e) => e.user);
    keyed
      .window(tumbling({ size: 10 }))
      .aggregate(count())
      .sink('counts');
    const consumed = keyed
      .window(tumbling({ size: 20 }))
      .sideOutputLateData('late-20')
      .aggregate(count());
    consumed.sink('counts-20');
    consumed.lateData().sink('late-archive');
    keyed
      .window(session({ gap: 5 }))
      .sideOutputLateData('late-sessions')
      .reduce((a) => a)
      .sink('sessions');
    keyed.process(passThrough).sink('counts');
    const plan = compile(p);
    expect(plan.name).toBe('sinks');
    expect(plan.version).toBe('7');
    expect(plan.strategy).toEqual({ bound: 1_000, idleTimeout: undefined });
    expect(plan.sinks).toEqual([
      'counts',
      'counts-20',
      'late-archive',
      'sessions',
      DEAD_LETTER_SINK,
      DEFAULT_LATE_SINK,
      'late-sessions',
    ]);
    expect(plan.operators.map((o) => [...o.sideOutputs.keys()])).toEqual([[], ['late-20'], [], []]);
  });

  it('a minimal pipeline writes its sink and the dead-letter sink', () => {
    const p = pipeline('minimal');
    p.source().sink('copy');
    const plan = compile(p);
    expect(plan.sinks).toEqual(['copy', 'floe.dead-letter']);
    expect(plan.operators).toEqual([]);
    expect(plan.strategy).toBeUndefined();
  });
});

describe('reserved sink and side-output names ("floe.")', () => {
  const windowed = (name = 'reserved-names') =>
    timed(pipeline(name))
      .keyBy((e) => e.user)
      .window(tumbling({ size: 10 }));
  const processed = () =>
    pipeline('reserved-side')
      .source<Ev>()
      .keyBy((e) => e.user)
      .process(passThrough);

  it.each([DEAD_LETTER_SINK, DEFAULT_LATE_SINK, 'floe.other', 'floe.'])('.sink(%j) is refused', (name) => {
    definitionError(
      () => pipeline('reserved-sink').source<Ev>().sink(name),
      `sink: the name "${name}" is reserved`,
      'choose a name that does not start with "floe."',
    );
  });

  it('says what each reserved name is for', () => {
    definitionError(
      () => pipeline('a').source<Ev>().sink(DEFAULT_LATE_SINK),
      'reserved for the late data',
      'lateData()',
    );
    definitionError(
      () => pipeline('b').source<Ev>().sink('floe.x'),
      'names starting with "floe." are floe\'s own (floe.dead-letter, floe.late)',
    );
  });

  it.each([DEAD_LETTER_SINK, 'floe.other'])('.sideOutputLateData(%j) is refused', (name) => {
    definitionError(
      () => windowed().sideOutputLateData(name),
      `sideOutputLateData: the name "${name}" is reserved`,
    );
  });

  it('.sideOutputLateData("floe.late") is the default and accepted', () => {
    const p = pipeline('late-default');
    const result = timed(p)
      .keyBy((e) => e.user)
      .window(tumbling({ size: 10 }))
      .sideOutputLateData(DEFAULT_LATE_SINK)
      .aggregate(count());
    result.sink('counts');
    expect(compile(p).sinks).toEqual(['counts', DEAD_LETTER_SINK, DEFAULT_LATE_SINK]);
    // Consuming it under its default name is lateData().
    result.lateData().sink('late-archive');
    const plan = compile(p);
    expect(plan.sinks).toEqual(['counts', 'late-archive', DEAD_LETTER_SINK]);
    expect([...plan.operators[0]!.sideOutputs.keys()]).toEqual([DEFAULT_LATE_SINK]);
  });

  it.each([DEAD_LETTER_SINK, DEFAULT_LATE_SINK, 'floe.timers'])('.sideOutput(%j) is refused', (name) => {
    definitionError(() => processed().sideOutput(name), `sideOutput: the name "${name}" is reserved`);
    definitionError(
      () => windowed().aggregate(count()).sideOutput(name),
      `sideOutput: the name "${name}" is reserved`,
    );
  });

  it.each([
    ['*', 'the name "*" stands for every other sink in sink bindings'],
    ['a=b', 'the name "a=b" contains "=", which ends a sink\'s name in a sink binding (name=destination)'],
    [' counts', 'the name " counts" starts or ends with white space, which sink bindings trim'],
    ['counts\n', 'the name "counts\\n" starts or ends with white space'],
  ])(
    'a name no sink binding could address (%j) is refused by every call that names a sink',
    (name, problem) => {
      definitionError(() => pipeline('unbindable').source<Ev>().sink(name), `sink: ${problem}`);
      definitionError(() => windowed().sideOutputLateData(name), `sideOutputLateData: ${problem}`);
      definitionError(() => processed().sideOutput(name), `sideOutput: ${problem}`);
      const graph = pipeline('graph-unbindable');
      graph.add({ kind: 'sink', input: graph.source<Ev>().node, name });
      definitionError(() => compile(graph), `pipeline "graph-unbindable": sink: ${problem}`);
    },
  );

  it('user-named late outputs and side outputs are not affected', () => {
    const p = pipeline('named');
    const source = p.source<Ev>();
    const result = source
      .withTimestamps((e) => e.ts, boundedOutOfOrderness(seconds(1)))
      .keyBy((e) => e.user)
      .window(tumbling({ size: 10 }))
      .sideOutputLateData('late-views')
      .aggregate(count());
    result.sink('counts');
    result.sideOutput('late-views').sink('late-archive');
    const side = source.keyBy((e) => e.user).process(passThrough);
    side.sink('out');
    side.sideOutput('flo.e-like').sink('floe-like'); // only the "floe." prefix is reserved
    expect(compile(p).sinks).toEqual(['counts', 'late-archive', 'out', 'floe-like', DEAD_LETTER_SINK]);
  });

  it('compile refuses reserved names in a graph however it was built', () => {
    const sinkNode = pipeline('graph-sink');
    const source = sinkNode.source<Ev>();
    sinkNode.add({ kind: 'sink', input: source.node, name: DEFAULT_LATE_SINK });
    definitionError(
      () => compile(sinkNode),
      'pipeline "graph-sink": sink: the name "floe.late" is reserved for the late data',
    );

    const lateNode = pipeline('graph-late');
    const keyed = timed(lateNode).keyBy((e) => e.user);
    keyed.addOperator('window', passThrough as never, undefined, DEAD_LETTER_SINK, 'tumbling').sink('out');
    definitionError(
      () => compile(lateNode),
      'pipeline "graph-late": sideOutputLateData: the name "floe.dead-letter" is reserved for dead letters',
    );

    // Consuming "floe.late" of an operator whose late output is not "floe.late".
    const sideNode = pipeline('graph-side');
    const op = sideNode
      .source<Ev>()
      .keyBy((e) => e.user)
      .process(passThrough);
    op.sink('out');
    sideNode.add({ kind: 'sideOutput', input: op.node, name: DEFAULT_LATE_SINK });
    definitionError(
      () => compile(sideNode),
      'pipeline "graph-side": sideOutput: the name "floe.late" is reserved',
    );
  });
});

describe('withTimestamps comes once, before keyBy', () => {
  const message = 'it comes once per pipeline, before keyBy';

  it('is refused on the output of a process operator', () => {
    const p = pipeline('ts-after-process');
    const out = p
      .source<Ev>()
      .keyBy((e) => e.user)
      .process(passThrough);
    const error = definitionError(
      () => out.withTimestamps((e) => e.ts, monotonic()),
      'pipeline "ts-after-process": withTimestamps is called on the output of a process operator',
      message,
      'Call withTimestamps(...) on the stream before keyBy(...)',
    );
    expect(error.message).not.toContain('window operator');
  });

  it('is refused on a window result, behind a map, and on a side output', () => {
    const p = pipeline('ts-after-window');
    const result = timed(p)
      .keyBy((e) => e.user)
      .window(tumbling({ size: 10 }))
      .aggregate(count());
    definitionError(
      () => result.withTimestamps((r) => r.window.end, monotonic()),
      'withTimestamps is called on the output of a window operator',
      message,
    );
    definitionError(
      () =>
        result
          .map((r) => r.window.end)
          .filter((end) => end > 0)
          .withTimestamps((end) => end, monotonic()),
      'output of a window operator',
    );
    definitionError(
      () => result.lateData().withTimestamps(() => 0, monotonic()),
      'output of a window operator',
    );
    const processed = pipeline('ts-after-side')
      .source<Ev>()
      .keyBy((e) => e.user)
      .process(passThrough);
    definitionError(
      () => processed.sideOutput<Ev>('alerts').withTimestamps((e) => e.ts, monotonic()),
      'output of a process operator',
    );
  });

  it('compile refuses it in a graph however it was built', () => {
    const p = pipeline('ts-graph');
    const out = p
      .source<Ev>()
      .keyBy((e) => e.user)
      .process(passThrough);
    p.add({ kind: 'timestamps', input: out.node, fn: (e: Ev) => e.ts, strategy: monotonic() });
    out.sink('out');
    definitionError(
      () => compile(p),
      'pipeline "ts-graph": withTimestamps follows a window or process operator',
      'once per pipeline, before keyBy',
    );
  });

  it('is accepted right after the source or after stateless operators, once', () => {
    const p = pipeline('ts-ok');
    p.source<Ev>()
      .filter((e) => e.ts > 0)
      .map((e) => ({ ...e, user: e.user.toLowerCase() }))
      .withTimestamps((e) => e.ts, monotonic())
      .keyBy((e) => e.user)
      .window(tumbling({ size: 10 }))
      .aggregate(count())
      .sink('counts');
    expect(compile(p).strategy).toEqual({ bound: 0, idleTimeout: undefined });
  });
});

describe('aggregate functions are checked when the pipeline is built', () => {
  const windowed = () =>
    timed(pipeline('agg'))
      .keyBy((e) => e.user)
      .window(tumbling({ size: 10 }));
  const agg = (value: unknown) => value as AggregateFunction<Ev, number, number>;
  const fns = { create: () => 0, add: (_e: Ev, acc: number) => acc + 1, result: (acc: number) => acc };

  it.each([
    [
      'create',
      { add: fns.add, result: fns.result },
      'create must be a function, create() returning a new accumulator',
    ],
    [
      'add',
      { create: fns.create, add: 1, result: fns.result },
      'add must be a function, add(value, accumulator)',
    ],
    [
      'result',
      { create: fns.create, add: fns.add },
      "result must be a function, result(accumulator) returning the window's result",
    ],
    ['merge', { ...fns, merge: 'sum' }, 'merge must be a function, merge(a, b) combining two accumulators'],
  ])('rejects an aggregate whose %s is not a function', (_member, value, fragment) => {
    const error = definitionError(
      () => windowed().aggregate(agg(value)),
      'aggregate needs {create, add, merge?, result}: ',
      fragment,
      'received {',
      'Use a built-in such as count(), sum((e) => e.amount) or collect()',
    );
    expect(error.message).toMatch(/received \{create: (a function|undefined), add: /);
  });

  it('names what it received', () => {
    definitionError(
      () => windowed().aggregate(agg({ create: fns.create, add: fns.add, result: 3 })),
      'received {create: a function, add: a function, result: 3}',
    );
    definitionError(
      () => windowed().aggregate(agg({ ...fns, merge: null })),
      'received {create: a function, add: a function, merge: null, result: a function}',
      'or leave merge out',
    );
    definitionError(
      () => windowed().aggregate(agg(undefined)),
      'AggregateFunction {create, add, merge?, result}; received undefined',
    );
    definitionError(() => windowed().aggregate(agg(42)), 'received 42');
    definitionError(() => windowed().aggregate(agg(count)), 'received a function (write count(), not count)');
  });

  it('accepts objects with the functions, including class instances and no merge on aligned windows', () => {
    class Counter {
      create(): number {
        return 0;
      }
      add(_e: Ev, acc: number): number {
        return acc + 1;
      }
      result(acc: number): number {
        return acc;
      }
    }
    expect(() => windowed().aggregate(new Counter()).sink('a')).not.toThrow();
    expect(() => windowed().aggregate(fns).sink('b')).not.toThrow();
    expect(() =>
      windowed()
        .aggregate({ ...fns, merge: undefined })
        .sink('c'),
    ).not.toThrow();
  });

  it('checks the reduce function and the window function', () => {
    definitionError(
      () => windowed().reduce(undefined as unknown as (a: Ev, b: Ev) => Ev),
      'reduce needs a function; received undefined',
    );
    definitionError(
      () => windowed().aggregate(count(), 'fn' as never),
      'aggregate window function needs a function; received "fn"',
    );
  });
});

describe('pipeline functions must be synchronous', () => {
  const sync = 'floe calls pipeline functions synchronously, inside a commit, and cannot wait for a Promise';
  const windowed = () =>
    timed(pipeline('async'))
      .keyBy((e) => e.user)
      .window(tumbling({ size: 10 }));

  it('refuses async functions in every stateless call when the pipeline is built', () => {
    const source = () => pipeline('async').source<Ev>();
    definitionError(
      () => source().map(async (e) => e),
      'map needs a synchronous function; received an async function.',
      sync,
    );
    definitionError(
      () => source().filter((async () => true) as never),
      'filter needs a synchronous function',
      sync,
    );
    definitionError(
      () =>
        source().flatMap(async function* (e: Ev) {
          yield e;
        } as never),
      'flatMap needs a synchronous function',
    );
    definitionError(
      () => source().withTimestamps((async (e: Ev) => e.ts) as never, boundedOutOfOrderness(0)),
      'withTimestamps needs a synchronous function',
    );
    definitionError(
      () => source().keyBy((async (e: Ev) => e.user) as never),
      'keyBy needs a synchronous function',
    );
    definitionError(
      () => pipeline('async').source({ deserializer: (async (data: unknown) => data) as never }),
      'source deserializer needs a synchronous function',
    );
  });

  it('refuses async aggregate members, window functions, reduce and process methods', () => {
    definitionError(
      () => windowed().aggregate({ ...count<Ev>(), add: async (_e: Ev, n: number) => n + 1 } as never),
      "aggregate's add needs a synchronous function",
    );
    definitionError(
      () => windowed().aggregate(count(), async (r) => r.result),
      'aggregate window function needs a synchronous function',
    );
    definitionError(
      () => windowed().reduce((async (a: Ev) => a) as never),
      'reduce needs a synchronous function',
    );
    definitionError(
      () =>
        timed(pipeline('async'))
          .keyBy((e) => e.user)
          .process({ async processElement() {} }),
      'process: processElement needs a synchronous function',
    );
    definitionError(
      () =>
        timed(pipeline('async'))
          .keyBy((e) => e.user)
          .process({ processElement() {}, async onTimer() {} }),
      'process: onTimer needs a synchronous function',
    );
    definitionError(
      () =>
        timed(pipeline('async'))
          .keyBy((e) => e.user)
          .process({ processElement() {}, onTimer: 5 } as never),
      'process: onTimer must be a method onTimer(timer, ctx) or left out; received 5',
    );
  });

  it('checks that each state of a process function is a descriptor', () => {
    const keyed = () => timed(pipeline('state')).keyBy((e) => e.user);
    definitionError(
      () => keyed().process({ state: { n: valueState }, processElement() {} } as never),
      'process: state "n" must be valueState(), mapState() or listState(); received a function (call it: valueState(), not valueState)',
    );
    definitionError(
      () => keyed().process({ state: { n: { kind: 'counter' } }, processElement() {} } as never),
      'process: state "n" must be valueState(), mapState() or listState(); received {"kind":"counter"}',
    );
    definitionError(
      () => keyed().process({ state: [valueState()], processElement() {} } as never),
      'process: state must be an object of named state descriptors',
    );
  });

  it('checks a descriptor written by hand as valueState, mapState and listState check their options', () => {
    const keyed = () => timed(pipeline('state')).keyBy((e) => e.user);
    const withState = (state: unknown) => () => keyed().process({ state, processElement() {} } as never);
    // A ttl of 0 would expire every write at once: data silently lost.
    definitionError(withState({ n: { kind: 'value', ttl: 0 } }), 'process: state "n": state ttl must be');
    definitionError(withState({ n: { kind: 'list', ttl: '1000' } }), 'process: state "n": state ttl must be');
    definitionError(
      withState({ m: { kind: 'map', layout: 'by-map-key', ttl: 5 } }),
      `process: state "m": map state with layout 'by-map-key' does not support a ttl`,
    );
    definitionError(
      withState({ m: { kind: 'map', layout: 'weird' } }),
      `process: state "m": map state layout must be 'per-key' or 'by-map-key'; received "weird"`,
    );
    definitionError(
      withState({ n: { kind: 'value', tll: 1000 } }),
      'process: state "n" (value state) has unknown option "tll"; its options are ttl',
    );
    definitionError(
      withState(JSON.parse('{"__proto__": {"kind": "value"}}')),
      'process: "__proto__" cannot name a state',
    );
    expect(
      withState({ n: { kind: 'value', ttl: 1000 }, m: { kind: 'map' }, l: { kind: 'list' } }),
    ).not.toThrow();
  });

  it('accepts plain functions and generators', () => {
    const p = pipeline('sync');
    p.source<Ev>()
      .flatMap(function* (e) {
        yield e;
      })
      .map((e) => e)
      .sink('out');
    expect(() => compile(p)).not.toThrow();
  });
});
