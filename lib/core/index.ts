/** floe's engine: the public API of lib/core. */
export * from './aggregates.ts';
export * from './checkpoint.ts';
export { compile, isPipeline, type KeyedOperatorPlan, type PipelinePlan } from './compile.ts';
export * from './dsl.ts';
export * from './errors.ts';
export { MemoryBackend } from './memory-backend.ts';
export { outputValueJson } from './outputs.ts';
export * from './partitioning.ts';
export * from './ports.ts';
export type * from './processor.ts';
export { processFunction } from './processor.ts';
export { seededRandom } from './random.ts';
export * from './savepoint.ts';
export * from './shard-task.ts';
export {
  type ListState,
  listState,
  type MapState,
  type MapStateLayout,
  type MapStateOptions,
  mapState,
  type StateHandles,
  type StateKey,
  type StateSpec,
  type ValueState,
  valueState,
} from './state.ts';
export * from './time.ts';
export {
  compareTimerSpecs,
  isTimerChunkAddress,
  TIMER_CHUNK_OPERATOR,
  type TimerLogOptions,
  withInlineTimers,
} from './timer-log.ts';
export * from './watermarks.ts';
export type { WindowFunction, WindowResult } from './window-operator.ts';
export * from './windows.ts';
