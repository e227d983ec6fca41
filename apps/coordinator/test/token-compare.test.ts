/**
 * "Every call carries the job token (constant-time compare)": the coordinator compares a presented token
 * with the job's through crypto.timingSafeEqual on two 32-byte SHA-256 digests, whatever the lengths and
 * contents of the tokens (so neither leaks through the time a refusal takes), and refuses every wrong one.
 * The worker's peer service (tokenMatches) and its data links (macEquals) are in
 * apps/worker/test/token-compare.test.ts.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { syncBuiltinESMExports } from 'node:module';
import * as grpc from '@grpc/grpc-js';
import { joinRequest, meta, refused, rpc, TOKEN, withJob } from './helpers.ts';

/** Runs `body` with crypto.timingSafeEqual recording the byte lengths it compares (ESM bindings included). */
async function recordingTimingSafeEqual(body: (calls: [number, number][]) => Promise<void>): Promise<void> {
  const real = crypto.timingSafeEqual;
  const calls: [number, number][] = [];
  crypto.timingSafeEqual = (a: NodeJS.ArrayBufferView, b: NodeJS.ArrayBufferView) => {
    calls.push([a.byteLength, b.byteLength]);
    return real(a, b);
  };
  syncBuiltinESMExports();
  try {
    await body(calls);
  } finally {
    crypto.timingSafeEqual = real;
    syncBuiltinESMExports();
  }
}

test('the coordinator compares job tokens in constant time: timingSafeEqual on 32-byte digests for any token', async () => {
  await withJob({ minWorkers: 1, maxWorkers: 1 }, async ({ client }) => {
    const c = client();
    await recordingTimingSafeEqual(async (calls) => {
      const wrong = ['', 'x', TOKEN.slice(0, -1), `${TOKEN}x`, 'y'.repeat(4096), TOKEN.replace(/^./, 'S')];
      for (const token of wrong) {
        await refused(rpc(c, 'join', joinRequest('worker-0'), meta(token)), grpc.status.UNAUTHENTICATED, 'wrong job token');
      }
      assert.equal(calls.length, wrong.length, 'one timingSafeEqual per call');
      assert.ok(
        calls.every(([a, b]) => a === 32 && b === 32),
        `digests compared: ${JSON.stringify(calls)}`,
      );
    });
  });
});
