/**
 * `@floe/pipeline` is not a package: when the StreamProcessor construct (cdk/) bundles
 * functions/*.ts, esbuild aliases it to the job's pipeline module (the construct's `pipeline`
 * prop), so the pipeline is compiled into the function and nothing is loaded at run time.
 */
declare module '@floe/pipeline' {
  const pipeline: import('../lib/core/index.ts').Pipeline;
  export default pipeline;
}
