/**
 * Savepoints in a local directory: `<root>/<savepoint id>/<file>`. Files are written to a
 * temporary name, flushed and renamed, so a crash never leaves a partial file under its name.
 */
import { randomBytes } from 'node:crypto';
import { mkdir, open, readdir, readFile, rename, rm, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { checkSavepointId, type SnapshotStore } from '../core/index.ts';

export class DirectorySnapshotStore implements SnapshotStore {
  readonly root: string;

  constructor(root: string) {
    this.root = resolve(root);
  }

  get location(): string {
    return this.root;
  }

  describe(savepointId: string, name?: string): string {
    return name === undefined ? join(this.root, savepointId) : join(this.root, savepointId, name);
  }

  async write(savepointId: string, name: string, data: Uint8Array): Promise<void> {
    checkSavepointId(savepointId);
    const dir = join(this.root, savepointId);
    await mkdir(dir, { recursive: true });
    const tmp = join(dir, `.${name}.${randomBytes(4).toString('hex')}.tmp`);
    const handle = await open(tmp, 'w');
    try {
      await handle.writeFile(data);
      await handle.sync();
    } finally {
      await handle.close();
    }
    await rename(tmp, join(dir, name));
  }

  async read(savepointId: string, name: string): Promise<Uint8Array | undefined> {
    checkSavepointId(savepointId);
    try {
      return await readFile(join(this.root, savepointId, name));
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
  }

  async listSavepoints(): Promise<string[]> {
    let names: string[];
    try {
      names = await readdir(this.root);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
    const out: string[] = [];
    for (const name of names) {
      if (name.startsWith('.')) continue;
      if ((await stat(join(this.root, name))).isDirectory() && (await this.listFiles(name)).length > 0)
        out.push(name);
    }
    return out.sort();
  }

  async listFiles(savepointId: string): Promise<string[]> {
    checkSavepointId(savepointId);
    try {
      return (await readdir(join(this.root, savepointId))).filter((n) => !n.startsWith('.')).sort();
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return [];
      throw error;
    }
  }

  async remove(savepointId: string): Promise<void> {
    checkSavepointId(savepointId);
    await rm(join(this.root, savepointId), { recursive: true, force: true });
  }
}
