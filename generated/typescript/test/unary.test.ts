/** Unary calls against a real oma-server: enroll, get, list (with pagination), errors with their ErrorInfo. */
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import * as http2 from "node:http2";
import { join } from "node:path";
import type { AddressInfo } from "node:net";
import { test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { ConnectionState, ApplianceStatus } from "../oma/v1/appliance_pb.js";
import {
  connectOma,
  describeError,
  errorInfo,
  fieldViolations,
  OMA_ERROR_DOMAIN,
  resourceInfos,
} from "../sdk/index.js";
import { clients, runTag, tlsDir } from "./env.js";

const oma = clients();

test("server info names the running version", { timeout: 90_000 }, async () => {
  const info = await oma.serverInfo.getServerInfo({});
  assert.match(info.version, /^\d+\.\d+\.\d+/);
  assert.equal(info.databaseKind, "sqlite");
});

test("enroll, get and list appliances, following page tokens", { timeout: 90_000 }, async () => {
  const names = [0, 1, 2].map((i) => `ts-unary-${runTag}-${i}`);
  const enrolled = [];
  for (const name of names) enrolled.push(await oma.appliances.enrollAppliance({ name }));
  for (const [i, e] of enrolled.entries()) {
    assert.ok(e.appliance?.id, "enrollment returns the appliance");
    assert.ok(e.credential.length >= 16, "and its one-time credential");
    assert.equal(e.appliance?.name, names[i]);
  }
  const got = await oma.appliances.getAppliance({ id: enrolled[1].appliance!.id });
  assert.equal(got.appliance?.name, names[1]);
  assert.equal(got.appliance?.status, ApplianceStatus.ACTIVE);
  assert.equal(got.appliance?.connectionState, ConnectionState.NEVER_CONNECTED);

  const listed: string[] = [];
  let pageToken = "";
  let pages = 0;
  do {
    const page = await oma.appliances.listAppliances({ pageSize: 2, pageToken });
    assert.ok(page.appliances.length <= 2);
    listed.push(...page.appliances.map((a) => a.name));
    pageToken = page.nextPageToken;
    pages += 1;
  } while (pageToken);
  assert.ok(pages >= 2, `three appliances in pages of two take two pages at least (took ${pages})`);
  for (const name of names) assert.ok(listed.includes(name), `${name} is listed`);
});

test("a refused call carries its ErrorInfo: reason, domain, metadata", { timeout: 90_000 }, async () => {
  await assert.rejects(oma.appliances.enrollAppliance({ name: "bad name!" }), (raw: unknown) => {
    const error = ConnectError.from(raw);
    assert.equal(error.code, Code.InvalidArgument);
    const info = errorInfo(error);
    assert.equal(info?.reason, "APPLIANCE_NAME_INVALID");
    assert.equal(info?.domain, OMA_ERROR_DOMAIN);
    assert.match(error.rawMessage, /bad name!/);
    assert.match(describeError(error), /^INVALID_ARGUMENT: .* \(APPLIANCE_NAME_INVALID\)$/);
    return true;
  });
  await assert.rejects(oma.appliances.getAppliance({ id: "no-such-appliance" }), (raw: unknown) => {
    const error = ConnectError.from(raw);
    assert.equal(error.code, Code.NotFound);
    const info = errorInfo(error);
    assert.equal(info?.reason, "APPLIANCE_NOT_FOUND");
    assert.equal(info?.metadata["appliance_id"], "no-such-appliance");
    assert.deepEqual(
      resourceInfos(error).map((r) => [r.resourceType, r.resourceName]),
      [["oma.v1.Appliance", "no-such-appliance"]],
    );
    return true;
  });
  await assert.rejects(oma.appliances.getAppliance({ id: "not an id!" }), (raw: unknown) => {
    assert.deepEqual(
      fieldViolations(raw).map((v) => v.field),
      ["id"],
      "BadRequest names the field",
    );
    return true;
  });
});

test("UNAVAILABLE is retried with backoff, then reported", { timeout: 90_000 }, async () => {
  // A port that was free a moment ago: nothing listens there.
  const probe = http2.createServer();
  await new Promise<void>((resolve) => probe.listen(0, "127.0.0.1", resolve));
  const port = (probe.address() as AddressInfo).port;
  await new Promise<void>((resolve) => probe.close(() => resolve()));
  const retries: number[] = [];
  const nowhere = connectOma({
    address: `127.0.0.1:${port}`,
    retry: { maxAttempts: 3, initialBackoffMs: 5, onRetry: (attempt) => retries.push(attempt) },
  });
  await assert.rejects(nowhere.serverInfo.getServerInfo({}), (raw: unknown) => {
    assert.equal(ConnectError.from(raw).code, Code.Unavailable);
    assert.equal(errorInfo(raw), undefined, "a connection failure has no ErrorInfo");
    return true;
  });
  assert.deepEqual(retries, [1, 2], "three attempts: two retries");
  // The real OMA answers a refused call once: only UNAVAILABLE is retried.
  const counted: number[] = [];
  const real = clients({ retry: { onRetry: (attempt) => counted.push(attempt) } });
  await assert.rejects(real.appliances.getAppliance({ id: "no-such-appliance" }));
  assert.deepEqual(counted, []);
});

/** A bare HTTP/2 server that records each request's headers and refuses it UNAUTHENTICATED (what an OMA with
 * tokens — issue #14 — answers a bad token); plaintext, or TLS with the tests' certificate. */
async function refusingServer(tls: boolean) {
  const seen: (string | undefined)[] = [];
  const handler = (req: http2.Http2ServerRequest, res: http2.Http2ServerResponse) => {
    seen.push(req.headers["authorization"] as string | undefined);
    res.writeHead(200, { "content-type": "application/grpc", "grpc-status": "16", "grpc-message": "no token" });
    res.end();
  };
  const server = tls
    ? http2.createSecureServer({ key: readFileSync(join(tlsDir, "oma.key")), cert: readFileSync(join(tlsDir, "oma.pem")) }, handler)
    : http2.createServer(handler);
  const sessions = new Set<http2.ServerHttp2Session>();
  server.on("session", (session) => sessions.add(session));
  await new Promise<void>((resolve) => server.listen(0, "127.0.0.1", resolve));
  return {
    seen,
    address: `127.0.0.1:${(server.address() as AddressInfo).port}`,
    close: async () => {
      for (const session of sessions) session.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

const refusedUnauthenticated = (raw: unknown) => ConnectError.from(raw).code === Code.Unauthenticated;

test("the operator token goes on every call as a bearer token", { timeout: 90_000 }, async () => {
  const server = await refusingServer(false);
  try {
    let rotated = 0;
    const withToken = connectOma({ address: server.address, token: () => `tok-${++rotated}`, retry: false });
    await assert.rejects(withToken.serverInfo.getServerInfo({}), refusedUnauthenticated);
    await assert.rejects(withToken.serverInfo.getServerInfo({}), refusedUnauthenticated);
    assert.deepEqual(server.seen, ["Bearer tok-1", "Bearer tok-2"]);
  } finally {
    await server.close();
  }
});

test("TLS checks the OMA's certificate against the OMA's CA", { timeout: 90_000 }, async () => {
  const server = await refusingServer(true);
  try {
    const ca = readFileSync(join(tlsDir, "ca.pem"));
    const trusted = connectOma({ address: server.address, tls: { ca, serverName: "oma.test" }, token: "t", retry: false });
    await assert.rejects(trusted.serverInfo.getServerInfo({}), refusedUnauthenticated);
    assert.deepEqual(server.seen, ["Bearer t"], "the call went through TLS to the server");
    const untrusted = connectOma({ address: server.address, tls: { serverName: "oma.test" }, retry: false });
    await assert.rejects(untrusted.serverInfo.getServerInfo({}), (raw: unknown) => {
      // connect-node reports a refused certificate as INTERNAL, with Node's TLS error as the message
      const error = ConnectError.from(raw);
      assert.equal(error.code, Code.Internal);
      assert.match(error.rawMessage, /certificate/i);
      return true;
    });
    assert.equal(server.seen.length, 1, "an untrusted certificate stops the call before it is sent");
  } finally {
    await server.close();
  }
});
