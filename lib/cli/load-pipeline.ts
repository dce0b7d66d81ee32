/** Loads a pipeline module (a plain .ts file whose default export is built with the DSL). */
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ConfigurationError, isPipeline, type Pipeline } from '../core/index.ts';
import { checkModulePath } from './files.ts';

/**
 * Imports a user's module (`what`: "pipeline module", "--migration module"); one that fails to
 * load (a syntax error, an error thrown at import, a missing import) is a ConfigurationError of
 * one line naming the module and the reason.
 */
export async function importModule(modulePath: string, what: string): Promise<Record<string, unknown>> {
  try {
    return (await import(pathToFileURL(resolve(modulePath)).href)) as Record<string, unknown>;
  } catch (error) {
    const lines = (error instanceof Error ? error.message : String(error))
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line !== '');
    // esbuild's "Transform failed with 1 error:" is followed by the location and the reason.
    const message = /^Transform failed/.test(lines[0] ?? '') && lines[1] !== undefined ? lines[1] : lines[0];
    throw new ConfigurationError(`could not load ${what} ${modulePath}: ${message}`);
  }
}

export async function loadPipeline(modulePath: string | undefined): Promise<Pipeline> {
  if (modulePath === undefined || modulePath === '') {
    throw new ConfigurationError(
      'missing pipeline module: pass the path of a .ts file, e.g. examples/page-views.ts',
    );
  }
  // A missing path or a directory is a usage error (exit 2), as a missing --input file is.
  checkModulePath(modulePath, 'pipeline module');
  const module = await importModule(modulePath, 'pipeline module');
  // A CommonJS module (outside an ESM package) arrives as { default: module.exports }.
  const exported = isPipeline(module.default)
    ? module.default
    : (module.default as { default?: unknown } | undefined)?.default;
  if (!isPipeline(exported)) {
    // `export const p = pipeline(...)` without `export default p`: say which export to make the default.
    const named = Object.entries(module)
      .filter(([name, value]) => name !== 'default' && isPipeline(value))
      .map(([name]) => name);
    const hint =
      named.length === 0
        ? ''
        : `; the module exports a pipeline as ${named.map((n) => `"${n}"`).join(', ')}: add \`export default ${named[0]};\``;
    throw new ConfigurationError(
      `pipeline module ${modulePath} must export a pipeline as its default export (export default pipeline('name')...; received ${typeof module.default})${hint}`,
    );
  }
  return exported;
}
