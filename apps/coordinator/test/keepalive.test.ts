/**
 * The coordinator's keepalive pings wait for their answer for the job's worker timeout (issue 19):
 * a worker whose event loop is held up for seconds on a loaded host keeps its connection, and with
 * it its membership watch (a watch that ends removes its worker), until the heartbeats say it is gone.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { SERVER_OPTIONS, serverOptions } from '../src/coordinator.ts';

test('serverOptions: a keepalive ping waits workerTimeoutMs (at least 5 s); the rest is SERVER_OPTIONS', () => {
  assert.equal(serverOptions(30_000)['grpc.keepalive_timeout_ms'], 30_000);
  assert.equal(serverOptions(2_000)['grpc.keepalive_timeout_ms'], 5_000);
  const { ['grpc.keepalive_timeout_ms']: _, ...rest } = serverOptions(30_000);
  const { ['grpc.keepalive_timeout_ms']: __, ...base } = SERVER_OPTIONS;
  assert.deepEqual(rest, base);
});
