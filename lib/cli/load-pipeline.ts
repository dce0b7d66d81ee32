/** Loads a pipeline module (a plain .ts file whose default export is built with the DSL). */
import { existsSync } from 'node:fs';
import { resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { ConfigurationError, isPipeline, type Pipeline } from '../core/index.ts';

export async function loadPipeline(modulePath: string | undefined): Promise<Pipeline> {
  if (modulePath === undefined || modulePath === '') {
    throw new ConfigurationError(
      'missing pipeline module: pass the path of a .ts file, e.g. examples/page-views.ts',
    );
  }
  const absolute = resolve(modulePath);
  if (!existsSync(absolute)) {
    throw new ConfigurationError(`pipeline module not found: ${modulePath} (resolved to ${absolute})`);
  }
  let module: { default?: unknown };
  try {
    module = (await import(pathToFileURL(absolute).href)) as { default?: unknown };
  } catch (error) {
    const message = error instanceof Error ? error.message.split('\n')[0] : String(error);
    throw new ConfigurationError(`could not load pipeline module ${modulePath}: ${message}`);
  }
  if (!isPipeline(module.default)) {
    throw new ConfigurationError(
      `pipeline module ${modulePath} must export a pipeline as its default export (export default pipeline('name')...; received ${typeof module.default})`,
    );
  }
  return module.default;
}
