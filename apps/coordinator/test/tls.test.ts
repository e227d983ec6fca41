/**
 * The coordinator over TLS and mutual TLS, with certificates made by the `openssl` command (skipped,
 * with a reason, where it is not installed): who gets in, and the log line of each refused connection.
 */
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import * as grpc from '@grpc/grpc-js';
import { joinAs, refused, rpc, until, withJob } from './helpers.ts';

const hasOpenssl = spawnSync('openssl', ['version']).status === 0;

function makeCerts(dir: string) {
  const run = (...args: string[]) => execFileSync('openssl', args, { cwd: dir, stdio: 'pipe' });
  const ec = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];
  for (const ca of ['ca1', 'ca2'])
    run('req', '-x509', ...ec, '-keyout', `${ca}.key`, '-out', `${ca}.pem`, '-days', '2', '-subj', `/CN=${ca}`);
  writeFileSync(join(dir, 'server.ext'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\n');
  writeFileSync(join(dir, 'client.ext'), 'extendedKeyUsage=clientAuth\n');
  const sign = (name: string, ca: string, ext: string) => {
    run('req', ...ec, '-keyout', `${name}.key`, '-out', `${name}.csr`, '-subj', `/CN=${name}`);
    run(
      'x509',
      '-req',
      '-in',
      `${name}.csr`,
      '-CA',
      `${ca}.pem`,
      '-CAkey',
      `${ca}.key`,
      '-CAcreateserial',
      '-out',
      `${name}.pem`,
      '-days',
      '2',
      '-extfile',
      ext,
    );
  };
  sign('server', 'ca1', 'server.ext');
  sign('client1', 'ca1', 'client.ext');
  sign('client2', 'ca2', 'client.ext');
  const f = (n: string) => readFileSync(join(dir, n));
  return {
    ca1: f('ca1.pem'),
    server: { cert: f('server.pem'), key: f('server.key') },
    client1: { cert: f('client1.pem'), key: f('client1.key') },
    client2: { cert: f('client2.pem'), key: f('client2.key') },
  };
}

test(
  'TLS: a client trusting the CA works; a plaintext client is refused (UNAVAILABLE) and the refusal logged',
  { skip: hasOpenssl ? false : 'the openssl command is not installed' },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vitreg-tls-'));
    try {
      const certs = makeCerts(dir);
      await withJob({ tls: { ...certs.server } }, async ({ client, lines }) => {
        const ok = client(grpc.credentials.createSsl(certs.ca1));
        const id = await joinAs(ok, 'a');
        assert.deepEqual(await rpc(ok, 'heartbeat', { workerId: id }), { epoch: 0, member: true });
        const plain = client(grpc.credentials.createInsecure());
        await refused(rpc(plain, 'heartbeat', { workerId: id }), grpc.status.UNAVAILABLE, /.*/);
        await until('refused TLS log line', () =>
          lines.find((l) => /^refused TLS connection from 127\.0\.0\.1:\d+: TLS handshake failed/.test(l)),
        );
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);

test(
  'mutual TLS: a client certificate from the CA works; one from another CA, or none, is refused and logged',
  { skip: hasOpenssl ? false : 'the openssl command is not installed' },
  async () => {
    const dir = mkdtempSync(join(tmpdir(), 'vitreg-mtls-'));
    try {
      const certs = makeCerts(dir);
      await withJob({ tls: { ...certs.server, ca: certs.ca1 } }, async ({ client, lines }) => {
        const good = client(grpc.credentials.createSsl(certs.ca1, certs.client1.key, certs.client1.cert));
        const id = await joinAs(good, 'a');
        assert.deepEqual(await rpc(good, 'heartbeat', { workerId: id }), { epoch: 0, member: true });
        const other = client(grpc.credentials.createSsl(certs.ca1, certs.client2.key, certs.client2.cert));
        await refused(rpc(other, 'heartbeat', { workerId: id }), grpc.status.UNAVAILABLE, /.*/);
        await until('refused client certificate log line', () =>
          lines.find((l) =>
            /^refused TLS connection from 127\.0\.0\.1:\d+: client certificate refused: \w+ \(subject CN=client2\)$/.test(l),
          ),
        );
        const none = client(grpc.credentials.createSsl(certs.ca1));
        await refused(rpc(none, 'heartbeat', { workerId: id }), grpc.status.UNAVAILABLE, /.*/);
        await until('no client certificate log line', () => lines.find((l) => /client certificate refused: the client sent none/.test(l)));
        assert.deepEqual(await rpc(good, 'heartbeat', { workerId: id }), { epoch: 0, member: true }, 'the job is unaffected');
      });
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  },
);
