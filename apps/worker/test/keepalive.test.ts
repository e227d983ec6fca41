/**
 * gRPC keepalive pings wait for their answer as long as the job waits for a silent peer (issue 19): a
 * worker whose event loop is held up for seconds on a loaded host must not lose its connection, and
 * with it its membership watch, before the job's own timeouts say it is gone. channelOptions is what
 * the coordinator link (--coordinator-timeout-ms) and the ring successor link (the link timeout) use.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { CHANNEL_OPTIONS, channelOptions } from '../src/grpc-client.ts';

test('channelOptions: a keepalive ping waits the given timeout (at least 5 s); the rest is CHANNEL_OPTIONS', () => {
  assert.equal(channelOptions(30_000)['grpc.keepalive_timeout_ms'], 30_000);
  assert.equal(channelOptions(12_345.4)['grpc.keepalive_timeout_ms'], 12_345);
  assert.equal(channelOptions(2_000)['grpc.keepalive_timeout_ms'], 5_000);
  const { ['grpc.keepalive_timeout_ms']: _, ...rest } = channelOptions(30_000);
  const { ['grpc.keepalive_timeout_ms']: __, ...base } = CHANNEL_OPTIONS;
  assert.deepEqual(rest, base);
  assert.equal(CHANNEL_OPTIONS['grpc.keepalive_time_ms'], 10_000);
});
