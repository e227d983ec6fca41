/**
 * gRPC keepalive pings wait for their answer as long as the job waits for a silent peer (issue 19): a
 * worker whose event loop is held up for seconds on a loaded host must not lose its connection, and
 * with it its membership watch, before the job's own timeouts say it is gone. channelOptions is what
 * the coordinator link (--coordinator-timeout-ms) and the ring successor link (the link timeout) use.
 * And the coordinator link's watchdog does not count the time its own process was held up as the
 * coordinator's silence.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { startCoordinator } from '@vitreg/coordinator';
import { CHANNEL_OPTIONS, channelOptions } from '../src/grpc-client.ts';
import { CoordinatorLink } from '../src/coordinator-link.ts';

test('channelOptions: a keepalive ping waits the given timeout (at least 5 s); the rest is CHANNEL_OPTIONS', () => {
  assert.equal(channelOptions(30_000)['grpc.keepalive_timeout_ms'], 30_000);
  assert.equal(channelOptions(12_345.4)['grpc.keepalive_timeout_ms'], 12_345);
  assert.equal(channelOptions(2_000)['grpc.keepalive_timeout_ms'], 5_000);
  const { ['grpc.keepalive_timeout_ms']: _, ...rest } = channelOptions(30_000);
  const { ['grpc.keepalive_timeout_ms']: __, ...base } = CHANNEL_OPTIONS;
  assert.deepEqual(rest, base);
  assert.equal(CHANNEL_OPTIONS['grpc.keepalive_time_ms'], 10_000);
});

test("the watchdog does not count its own process held up as the coordinator's silence", async () => {
  const c = await startCoordinator({ host: '127.0.0.1', port: 0, jobId: 'j', token: 't', minWorkers: 1, maxWorkers: 1, joinTimeoutMs: 50 });
  const fatal: string[] = [];
  const link = new CoordinatorLink(
    { coordinator: `127.0.0.1:${c.port}`, token: 't', jobId: 'j', coordinatorTimeoutMs: 1500 },
    {
      over: () => false,
      progress: () => ({ epoch: 1, step: 0 }),
      membership: () => undefined,
      notMember: () => undefined,
      fatal: (e) => fatal.push(e.message),
    },
  );
  try {
    await link.join({
      name: 'w',
      launcherRank: 0,
      peerAddress: '127.0.0.1:1',
      capabilities: { backend: 'cpu', device: 'cpu', hostname: 'h', pid: 1, localRank: 0, threads: 1, transports: ['tcp'] },
      configJson: '{}',
    });
    link.start();
    await new Promise((r) => setTimeout(r, 600));
    // The event loop held up for twice the coordinator timeout (this process's own stall).
    const end = Date.now() + 3000;
    while (Date.now() < end);
    await new Promise((r) => setTimeout(r, 1000));
    assert.deepEqual(fatal, []);
  } finally {
    link.stop();
    link.close();
    await c.close();
  }
});
