/**
 * lib/core is the pure engine: it imports nothing from AWS, the CDK, SQLite or the filesystem
 * (adapters live in lib/aws and lib/embedded). Biome's noRestrictedImports enforces the same
 * rule while editing; this test also catches dynamic imports, require() and re-exports.
 */
import { readdirSync, readFileSync } from 'node:fs';
import { dirname, join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { describe, expect, it } from 'vitest';

// This test reads files, so it sits beside lib/core rather than in it.
const CORE = join(dirname(fileURLToPath(import.meta.url)), 'core');

/** Every non-test TypeScript source file under lib/core, relative to it. */
function coreSources(dir: string = CORE): string[] {
  const out: string[] = [];
  for (const entry of readdirSync(dir, { withFileTypes: true })) {
    const path = join(dir, entry.name);
    if (entry.isDirectory()) out.push(...coreSources(path));
    else if (entry.name.endsWith('.ts') && !entry.name.endsWith('.test.ts')) out.push(relative(CORE, path));
  }
  return out.sort();
}

/** Module specifiers of static imports/re-exports, dynamic import() and require(). */
function importedModules(source: string): string[] {
  const withoutComments = source.replace(/\/\*[\s\S]*?\*\//g, '').replace(/(^|[^:'"`])\/\/.*$/gm, '$1');
  const patterns = [
    /\bimport\s+(?:type\s+)?[^'"`;]*?\bfrom\s*['"]([^'"]+)['"]/g,
    /\bexport\s+(?:type\s+)?[^'"`;]*?\bfrom\s*['"]([^'"]+)['"]/g,
    /\bimport\s*['"]([^'"]+)['"]/g,
    /\bimport\s*\(\s*['"`]([^'"`]+)['"`]\s*\)/g,
    /\brequire\s*\(\s*['"`]([^'"`]+)['"`]\s*\)/g,
  ];
  const found = new Set<string>();
  for (const pattern of patterns) for (const m of withoutComments.matchAll(pattern)) found.add(m[1]!);
  return [...found].sort();
}

/** Why a module may not be imported from lib/core, or undefined if it may. */
function forbiddenReason(module: string): string | undefined {
  if (module === '@aws-sdk' || module.startsWith('@aws-sdk/')) return 'the AWS SDK belongs in lib/aws';
  if (module === 'aws-cdk-lib' || module.startsWith('aws-cdk-lib/')) return 'the CDK belongs in cdk/';
  if (module === 'constructs') return 'the CDK belongs in cdk/';
  if (module === 'better-sqlite3' || module === 'node:sqlite') return 'SQLite belongs in lib/embedded';
  if (/^(node:)?fs(\/promises)?$/.test(module)) return 'filesystem access belongs in lib/embedded or lib/cli';
  return undefined;
}

describe('the import detector', () => {
  it('finds static, type-only, side-effect, re-export, dynamic and require imports', () => {
    const source = [
      "import { a } from './a.ts';",
      "import type { B } from '@aws-sdk/client-kinesis';",
      'import * as fs from "node:fs";',
      "import {\n  c,\n  d,\n} from 'fs/promises';",
      "import 'better-sqlite3';",
      "export { e } from 'aws-cdk-lib/aws-lambda';",
      "export * from './b.ts';",
      "const m = await import('@aws-sdk/client-s3');",
      "const r = require('fs');",
      "// import { x } from 'node:fs'; (a comment)",
      "/* import { y } from 'aws-cdk-lib'; */",
      "const url = 'https://example.com'; // not an import",
    ].join('\n');
    expect(importedModules(source)).toEqual([
      './a.ts',
      './b.ts',
      '@aws-sdk/client-kinesis',
      '@aws-sdk/client-s3',
      'aws-cdk-lib/aws-lambda',
      'better-sqlite3',
      'fs',
      'fs/promises',
      'node:fs',
    ]);
  });

  it('forbids AWS, CDK, SQLite and filesystem modules and allows the rest', () => {
    const forbidden = [
      '@aws-sdk/client-dynamodb',
      '@aws-sdk/lib-dynamodb',
      'aws-cdk-lib',
      'aws-cdk-lib/aws-kinesis',
      'better-sqlite3',
      'node:fs',
      'node:fs/promises',
      'fs',
      'fs/promises',
    ];
    expect(forbidden.filter((m) => forbiddenReason(m) === undefined)).toEqual([]);
    const allowed = [
      'node:crypto',
      'node:path',
      './state.ts',
      '../core/dsl.ts',
      'vitest',
      'fs-extra-not-really',
    ];
    expect(allowed.filter((m) => forbiddenReason(m) !== undefined)).toEqual([]);
  });
});

describe('lib/core purity', () => {
  const files = coreSources();

  it('scans the engine sources (and not the tests)', () => {
    expect(files).toContain('shard-task.ts');
    expect(files).toContain('state.ts');
    expect(files).toContain('dsl.ts');
    expect(files).toContain(join('testing', 'test-driver.ts'));
    expect(files.some((f) => f.endsWith('.test.ts'))).toBe(false);
  });

  it('imports nothing from AWS, the CDK, SQLite or the filesystem', () => {
    const violations: string[] = [];
    for (const file of files) {
      const source = readFileSync(join(CORE, file), 'utf8');
      for (const module of importedModules(source)) {
        const reason = forbiddenReason(module);
        if (reason !== undefined) violations.push(`lib/core/${file} imports ${module}: ${reason}`);
      }
    }
    expect(violations).toEqual([]);
  });
});
