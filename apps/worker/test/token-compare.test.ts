/**
 * The worker's token and MAC checks are constant-time compares: tokenMatches (the peer service's job
 * token) through crypto.timingSafeEqual on two 32-byte SHA-256 digests whatever the tokens' lengths,
 * and macEquals (a data link's HMAC) through timingSafeEqual whenever the lengths agree.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import { syncBuiltinESMExports } from 'node:module';
import { tokenMatches } from '../src/auth.ts';
import { linkMac, macEquals } from '../src/links.ts';

function recording(): { calls: [number, number][]; restore: () => void } {
  const real = crypto.timingSafeEqual;
  const calls: [number, number][] = [];
  crypto.timingSafeEqual = (a: NodeJS.ArrayBufferView, b: NodeJS.ArrayBufferView) => {
    calls.push([a.byteLength, b.byteLength]);
    return real(a, b);
  };
  syncBuiltinESMExports();
  return {
    calls,
    restore: () => {
      crypto.timingSafeEqual = real;
      syncBuiltinESMExports();
    },
  };
}

test('tokenMatches: timingSafeEqual on 32-byte digests for tokens of any length; only the job token matches', () => {
  const r = recording();
  try {
    const token = 'the-job-token';
    const results = ['', 'x', token.slice(0, -1), `${token}!`, 'z'.repeat(10_000), token].map((t) => tokenMatches(t, token));
    assert.deepEqual(results, [false, false, false, false, false, true]);
    assert.equal(r.calls.length, results.length);
    assert.ok(
      r.calls.every(([a, b]) => a === 32 && b === 32),
      JSON.stringify(r.calls),
    );
  } finally {
    r.restore();
  }
});

test('macEquals: a link MAC is compared with timingSafeEqual (32-byte HMAC-SHA256); one flipped bit fails', () => {
  const r = recording();
  try {
    const nonce = new Uint8Array(16).fill(7);
    const mac = linkMac('tok', nonce, 3, 'worker-1');
    const flipped = Buffer.from(mac);
    flipped[31] ^= 1;
    assert.deepEqual(
      [macEquals(mac, linkMac('tok', nonce, 3, 'worker-1')), macEquals(mac, flipped), macEquals(mac, linkMac('tok', nonce, 4, 'worker-1'))],
      [true, false, false],
    );
    assert.deepEqual(r.calls, [
      [32, 32],
      [32, 32],
      [32, 32],
    ]);
  } finally {
    r.restore();
  }
});
