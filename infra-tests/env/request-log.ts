/**
 * An HTTP proxy in front of an emulator's endpoint that records every request it forwards (the
 * operation, from the JSON protocol's X-Amz-Target header, and the parsed JSON body), so a test
 * can count the requests a process sends, e.g. a `floe` child process pointed at the proxy with
 * AWS_ENDPOINT_URL_DYNAMODB. Nothing is changed on the way: the emulator answers every request.
 * For the JSON protocols (DynamoDB, Kinesis); an S3 request is recorded with an empty operation.
 *
 *   const log = await startRequestLog(env.endpoints.dynamodb!);
 *   ... (run the process with AWS_ENDPOINT_URL_DYNAMODB: log.url)
 *   expect(log.count('DescribeTable', (body) => body.TableName === table)).toBe(1);
 *   log.close();
 */
import http from 'node:http';
import type { AddressInfo } from 'node:net';

export interface LoggedRequest {
  /** The operation (`DescribeTable`), or '' without an X-Amz-Target header. */
  readonly operation: string;
  /** The JSON body, or undefined when it is not JSON. */
  readonly body: Record<string, unknown> | undefined;
}

export interface RequestLog {
  readonly url: string;
  /** The requests forwarded so far, in the order they arrived. */
  readonly requests: readonly LoggedRequest[];
  /** How many requests of `operation` (whose body matches `where`) were forwarded. */
  count(operation: string, where?: (body: Record<string, unknown>) => boolean): number;
  close(): void;
}

export interface RequestLogOptions {
  /**
   * A reply to send instead of forwarding the request (undefined: forward it), e.g. a 500 for
   * every PutRecords to inject a transient failure the emulators never produce.
   */
  readonly answer?: (operation: string) => { readonly status: number; readonly body: unknown } | undefined;
}

export async function startRequestLog(target: string, options: RequestLogOptions = {}): Promise<RequestLog> {
  const upstream = new URL(target);
  const requests: LoggedRequest[] = [];
  const server = http.createServer((req, res) => {
    const chunks: Buffer[] = [];
    req.on('data', (chunk: Buffer) => chunks.push(chunk));
    req.on('end', () => {
      const payload = Buffer.concat(chunks);
      const header = req.headers['x-amz-target'];
      const operation = typeof header === 'string' ? header.slice(header.lastIndexOf('.') + 1) : '';
      let body: Record<string, unknown> | undefined;
      try {
        body = JSON.parse(payload.toString('utf8')) as Record<string, unknown>;
      } catch {
        body = undefined;
      }
      requests.push({ operation, body });
      const answer = options.answer?.(operation);
      if (answer !== undefined) {
        res.writeHead(answer.status, { 'content-type': 'application/x-amz-json-1.1' });
        res.end(JSON.stringify(answer.body));
        return;
      }
      const forward = http.request(
        {
          host: upstream.hostname,
          port: upstream.port,
          path: req.url,
          method: req.method,
          headers: req.headers,
        },
        (answer) => {
          res.writeHead(answer.statusCode ?? 502, answer.headers);
          answer.pipe(res);
        },
      );
      forward.on('error', () => res.destroy());
      forward.end(payload);
    });
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  return {
    url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`,
    requests,
    count: (operation, where = () => true) =>
      requests.filter((r) => r.operation === operation && r.body !== undefined && where(r.body)).length,
    close: () => {
      server.close();
      server.closeAllConnections();
    },
  };
}
