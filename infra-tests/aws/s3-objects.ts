// Reads back what S3 sinks wrote in infra tests: every object under a prefix, with its contents.
import { GetObjectCommand, ListObjectsV2Command, type S3Client } from '@aws-sdk/client-s3';

/** Key -> UTF-8 contents of every object under `prefix`, in listing order. */
export async function readObjects(s3: S3Client, bucket: string, prefix = ''): Promise<Map<string, string>> {
  const objects = new Map<string, string>();
  let token: string | undefined;
  do {
    const res = await s3.send(
      new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ContinuationToken: token }),
    );
    for (const o of res.Contents ?? []) {
      const body = await s3.send(new GetObjectCommand({ Bucket: bucket, Key: o.Key }));
      objects.set(o.Key!, (await body.Body?.transformToString('utf8')) ?? '');
    }
    token = res.NextContinuationToken;
  } while (token);
  return objects;
}
