/** Where the tests find the real oma-server they run against (tests/sdk/test_typescript.py starts it). */
import { readFileSync } from "node:fs";
import { connectOma, type OmaClients, type OmaConnectionOptions } from "../sdk/index.js";

export const address = process.env.OMA_ADDRESS ?? "";
if (!address) throw new Error("OMA_ADDRESS is not set: run these tests through tests/sdk/test_typescript.py");

/** TLS material of the tests (ca.pem, oma.pem, oma.key for "oma.test"), made by the Python side with openssl. */
export const tlsDir = process.env.OMA_TEST_TLS_DIR ?? "";
if (!tlsDir) throw new Error("OMA_TEST_TLS_DIR is not set: run these tests through tests/sdk/test_typescript.py");

/** The real OMA's own CA (its <data dir>/tls/ca.crt): it serves TLS, as every OMA does unless --insecure. */
export const omaCaFile = process.env.OMA_CA_FILE ?? "";
if (!omaCaFile) throw new Error("OMA_CA_FILE is not set: run these tests through tests/sdk/test_typescript.py");

/** The initial admin token the real OMA's first start wrote (its <data dir>/admin.token). */
const omaTokenFile = process.env.OMA_TOKEN_FILE ?? "";
if (!omaTokenFile) throw new Error("OMA_TOKEN_FILE is not set: run these tests through tests/sdk/test_typescript.py");
export const omaToken = readFileSync(omaTokenFile, "utf8").trim();

/** A unique tag per test run, so names never collide with what another test enrolled. */
export const runTag = `${process.pid}${Date.now() % 100000}`;

export function clients(options: Partial<OmaConnectionOptions> = {}): OmaClients {
  const tls = { ca: readFileSync(omaCaFile) };
  return connectOma({ address, tls, token: omaToken, defaultTimeoutMs: 30_000, ...options });
}
