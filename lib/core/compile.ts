/** Validates a pipeline graph and turns it into a plan the ShardTask can instantiate. */
import {
  DEAD_LETTER_SINK,
  DEFAULT_LATE_SINK,
  type Deserializer,
  type GraphNode,
  type Pipeline,
  reservedSinkName,
  unbindableSinkName,
} from './dsl.ts';
import { describeValue, PipelineDefinitionError } from './errors.ts';
import type { KeyedProcessFunction } from './processor.ts';
import type { StateKey, StateSpec } from './state.ts';
import type { WatermarkStrategy } from './watermarks.ts';

export interface KeyedOperatorPlan {
  readonly index: number;
  readonly uid: string;
  readonly kind: 'window' | 'process';
  readonly node: GraphNode;
  readonly keySelector: (value: unknown) => StateKey;
  readonly fn: KeyedProcessFunction<unknown, unknown, StateSpec>;
  /** Side outputs consumed by downstream nodes, by name. Others go to a sink of that name. */
  readonly sideOutputs: ReadonlyMap<string, GraphNode>;
}

export interface PipelinePlan {
  readonly name: string;
  readonly version: string;
  readonly source: GraphNode;
  readonly deserializer: Deserializer<unknown>;
  readonly strategy: WatermarkStrategy | undefined;
  readonly operators: readonly KeyedOperatorPlan[];
  /** Downstream nodes of each node (excluding sideOutput nodes, reached via their operator). */
  readonly children: ReadonlyMap<GraphNode, readonly GraphNode[]>;
  /** Every sink name the pipeline can write, including dead-letter and default side outputs. */
  readonly sinks: readonly string[];
}

export function isPipeline(value: unknown): value is Pipeline {
  return (
    typeof value === 'object' &&
    value !== null &&
    Array.isArray((value as Pipeline).nodes) &&
    typeof (value as Pipeline).name === 'string'
  );
}

export function compile(pipeline: Pipeline): PipelinePlan {
  if (!isPipeline(pipeline)) {
    throw new PipelineDefinitionError(
      `compile needs a pipeline made with pipeline(name) (e.g. a pipeline module's default export); received ${describeValue(pipeline)}`,
    );
  }
  const where = `pipeline "${pipeline.name}"`;
  const source = pipeline.nodes.find((n) => n.kind === 'source');
  if (source === undefined) {
    throw new PipelineDefinitionError(`${where} has no source: start it with pipeline(name).source()`);
  }
  const children = new Map<GraphNode, GraphNode[]>();
  for (const node of pipeline.nodes) children.set(node, []);
  for (const node of pipeline.nodes) {
    if (node.input !== undefined && node.kind !== 'sideOutput') children.get(node.input)!.push(node);
  }

  const timestamps = pipeline.nodes.filter((n) => n.kind === 'timestamps');
  if (timestamps.length > 1) {
    throw new PipelineDefinitionError(
      `${where} calls withTimestamps ${timestamps.length} times; a pipeline has one event-time assigner (the watermark is per shard). Call it once, before branching.`,
    );
  }

  const upstream = (node: GraphNode): GraphNode[] => {
    const path: GraphNode[] = [];
    for (let n = node.input; n !== undefined; n = n.input) path.push(n);
    return path;
  };
  // withTimestamps refuses this when it is called; checked again for any graph.
  for (const node of timestamps) {
    if (upstream(node).some((n) => n.kind === 'keyed')) {
      throw new PipelineDefinitionError(
        `${where}: withTimestamps follows a window or process operator, but it comes once per pipeline, before keyBy. Call withTimestamps(...) on the stream before keyBy(...).`,
      );
    }
  }

  const operators: KeyedOperatorPlan[] = [];
  const uids = new Set<string>();
  const counters = { window: 0, process: 0 };
  for (const node of pipeline.nodes) {
    if (node.kind !== 'keyed') continue;
    const path = upstream(node);
    if (path.some((n) => n.kind === 'keyed')) {
      throw new PipelineDefinitionError(
        `${where}: keyBy after a window or process operator would need a repartition stage, which floe does not support yet. Key the stream once, right after the source (by the Kinesis partition key).`,
      );
    }
    const kind = node.operatorKind!;
    if (kind === 'window' && !path.some((n) => n.kind === 'timestamps')) {
      throw new PipelineDefinitionError(
        `${where}: windows need event time. Call withTimestamps(extractor, boundedOutOfOrderness(...)) before keyBy(...).window(...).`,
      );
    }
    const uid = node.uid ?? `${kind}-${counters[kind]++}`;
    if (uids.has(uid)) {
      throw new PipelineDefinitionError(`${where}: two operators have the uid "${uid}"; uids must be unique`);
    }
    uids.add(uid);
    const sideOutputs = new Map<string, GraphNode>();
    for (const n of pipeline.nodes) {
      if (n.kind === 'sideOutput' && n.input === node) {
        if (sideOutputs.has(n.name!)) {
          throw new PipelineDefinitionError(
            `${where}: side output "${n.name}" of operator "${uid}" is consumed twice; branch the returned DataStream instead`,
          );
        }
        sideOutputs.set(n.name!, n);
        children.set(n, children.get(n) ?? []);
      }
    }
    operators.push({
      index: operators.length,
      uid,
      kind,
      node,
      keySelector: node.keySelector!,
      fn: node.process!,
      sideOutputs,
    });
  }
  for (const node of pipeline.nodes) {
    if (node.kind === 'sideOutput' && node.input?.kind !== 'keyed') {
      throw new PipelineDefinitionError(
        `${where}: sideOutput() is only available after a window or process operator`,
      );
    }
  }

  // Names starting with "floe." are floe's own: no user data may reach floe.dead-letter or
  // floe.late (the DSL calls refuse them too). The one exception is a window's late output
  // under its default name, and consuming it (lateData()).
  for (const node of pipeline.nodes) {
    const named: [string, string] | undefined =
      node.kind === 'sink'
        ? ['sink', node.name!]
        : node.kind === 'keyed' && node.lateOutput !== DEFAULT_LATE_SINK && node.lateOutput !== undefined
          ? ['sideOutputLateData', node.lateOutput]
          : node.kind === 'sideOutput' &&
              !(node.name === DEFAULT_LATE_SINK && node.input?.lateOutput === node.name)
            ? ['sideOutput', node.name!]
            : undefined;
    const problem = named && (reservedSinkName(...named) ?? unbindableSinkName(...named));
    if (problem !== undefined) throw new PipelineDefinitionError(`${where}: ${problem}`);
  }

  const sinks = new Set<string>();
  for (const node of pipeline.nodes) if (node.kind === 'sink') sinks.add(node.name!);
  if (sinks.size === 0) {
    throw new PipelineDefinitionError(`${where} has no sink: end each branch with .sink(name)`);
  }
  sinks.add(DEAD_LETTER_SINK);
  for (const op of operators) {
    const late = op.node.lateOutput;
    if (late !== undefined && !op.sideOutputs.has(late)) sinks.add(late);
  }

  return {
    name: pipeline.name,
    version: pipeline.version,
    source,
    deserializer: source.deserializer!,
    strategy: timestamps[0]?.strategy,
    operators,
    children,
    sinks: [...sinks],
  };
}
