/** Savepoints in S3: `s3://<bucket>/<prefix><savepoint id>/<file>` (each PutObject is atomic). */
import {
  DeleteObjectCommand,
  GetObjectCommand,
  ListObjectsV2Command,
  NoSuchKey,
  PutObjectCommand,
  type S3Client,
} from '@aws-sdk/client-s3';
import { ConfigurationError, checkSavepointId, type SnapshotStore } from '../core/index.ts';
import { withBackoff } from './retry.ts';

/** Parses `s3://bucket/prefix/` (the prefix ends with '/', or is empty). */
export function parseS3Url(url: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([^/]+)\/?(.*)$/.exec(url);
  if (m === null) throw new ConfigurationError(`expected an s3://bucket/prefix/ URL; received "${url}"`);
  const prefix = m[2] ?? '';
  return { bucket: m[1]!, prefix: prefix === '' || prefix.endsWith('/') ? prefix : `${prefix}/` };
}

export class S3SnapshotStore implements SnapshotStore {
  constructor(
    private readonly s3: S3Client,
    readonly bucket: string,
    /** Key prefix; ends with '/' or is empty. @default 'savepoints/' */
    readonly prefix = 'savepoints/',
  ) {}

  get location(): string {
    return `s3://${this.bucket}/${this.prefix}`;
  }

  describe(savepointId: string, name?: string): string {
    return `s3://${this.bucket}/${this.prefix}${savepointId}/${name ?? ''}`;
  }

  private key(savepointId: string, name: string): string {
    checkSavepointId(savepointId);
    return `${this.prefix}${savepointId}/${name}`;
  }

  async write(savepointId: string, name: string, data: Uint8Array): Promise<void> {
    const Key = this.key(savepointId, name);
    await withBackoff('PutObject', () =>
      this.s3.send(new PutObjectCommand({ Bucket: this.bucket, Key, Body: data })),
    );
  }

  async read(savepointId: string, name: string): Promise<Uint8Array | undefined> {
    const Key = this.key(savepointId, name);
    try {
      const res = await withBackoff('GetObject', () =>
        this.s3.send(new GetObjectCommand({ Bucket: this.bucket, Key })),
      );
      return await res.Body!.transformToByteArray();
    } catch (error) {
      const name = (error as { name?: string }).name;
      const status = (error as { $metadata?: { httpStatusCode?: number } }).$metadata?.httpStatusCode;
      if (error instanceof NoSuchKey || name === 'NoSuchKey' || status === 404) return undefined;
      throw error;
    }
  }

  private async list(prefix: string, delimiter: boolean): Promise<{ keys: string[]; prefixes: string[] }> {
    const keys: string[] = [];
    const prefixes: string[] = [];
    let token: string | undefined;
    do {
      const res = await withBackoff('ListObjectsV2', () =>
        this.s3.send(
          new ListObjectsV2Command({
            Bucket: this.bucket,
            Prefix: prefix,
            ...(delimiter ? { Delimiter: '/' } : {}),
            ...(token === undefined ? {} : { ContinuationToken: token }),
          }),
        ),
      );
      for (const o of res.Contents ?? []) if (o.Key !== undefined) keys.push(o.Key);
      for (const p of res.CommonPrefixes ?? []) if (p.Prefix !== undefined) prefixes.push(p.Prefix);
      token = res.IsTruncated ? res.NextContinuationToken : undefined;
    } while (token !== undefined);
    return { keys, prefixes };
  }

  async listSavepoints(): Promise<string[]> {
    const { prefixes } = await this.list(this.prefix, true);
    return prefixes.map((p) => p.slice(this.prefix.length, -1)).sort();
  }

  async listFiles(savepointId: string): Promise<string[]> {
    const base = this.key(savepointId, '');
    return (await this.list(base, false)).keys.map((k) => k.slice(base.length)).sort();
  }

  async remove(savepointId: string): Promise<void> {
    for (const name of await this.listFiles(savepointId)) {
      const Key = this.key(savepointId, name);
      await withBackoff('DeleteObject', () =>
        this.s3.send(new DeleteObjectCommand({ Bucket: this.bucket, Key })),
      );
    }
  }
}
