/**
 * A connection to the OMA: one gRPC transport (HTTP/2) with the options the raw client leaves to every caller —
 * TLS with the OMA's CA, the operator token on every call, retries of UNAVAILABLE — and a client per service.
 */
import { createClient, type Client, type Interceptor, type Transport } from "@connectrpc/connect";
import { createGrpcTransport } from "@connectrpc/connect-node";
import { ApplianceService } from "../oma/v1/appliance_pb.js";
import { ApplianceIdentityService } from "../oma/v1/appliance_identity_pb.js";
import { FailoverService, NetworkMappingService } from "../oma/v1/failover_pb.js";
import { VmaGatewayService } from "../oma/v1/gateway_pb.js";
import { JobService } from "../oma/v1/job_pb.js";
import { ReplicationService } from "../oma/v1/replication_pb.js";
import { ServerInfoService } from "../oma/v1/server_info_pb.js";
import { NbdExportService, VolumeService } from "../oma/v1/storage_pb.js";
import { VmContextService } from "../oma/v1/vm_context_pb.js";
import { retryOnUnavailable, type RetryPolicy } from "./retry.js";

/** TLS material in PEM. With `ca` the OMA's certificate is checked against it (not the system store). */
export interface TlsOptions {
  /** The OMA's CA certificate. */
  ca?: string | Buffer;
  /** Client certificate and key, for mutual TLS. */
  cert?: string | Buffer;
  key?: string | Buffer;
  /** Name the OMA's certificate must carry, when it differs from the address's host. */
  serverName?: string;
}

export interface OmaConnectionOptions {
  /** HOST:PORT of the OMA's gRPC listener, e.g. "127.0.0.1:50051". */
  address: string;
  /** TLS; absent means plaintext (h2c), what oma-server serves until TLS becomes its default. */
  tls?: TlsOptions;
  /** Operator token, sent as `authorization: Bearer <token>`; a function is asked before every call. */
  token?: string | (() => string | Promise<string>);
  /** Retries of unary calls answered UNAVAILABLE (default: 5 attempts); `false` turns them off. */
  retry?: RetryPolicy | false;
  /** Deadline in milliseconds of every call that sets none (default: none). It applies to streams too: give a
   * long-lived stream `{ timeoutMs: 0 }` (watchJobs does). */
  defaultTimeoutMs?: number;
  /** More interceptors, applied inside the token and retry ones. */
  interceptors?: Interceptor[];
}

/** An interceptor that puts the operator token on every call. */
export function bearerToken(token: NonNullable<OmaConnectionOptions["token"]>): Interceptor {
  return (next) => async (req) => {
    const value = typeof token === "function" ? await token() : token;
    req.header.set("authorization", `Bearer ${value}`);
    return next(req);
  };
}

/** The gRPC transport for `options`: share it between clients, they then share one HTTP/2 connection. */
export function createOmaTransport(options: OmaConnectionOptions): Transport {
  const interceptors: Interceptor[] = [...(options.interceptors ?? [])];
  if (options.token !== undefined) interceptors.push(bearerToken(options.token));
  if (options.retry !== false) interceptors.push(retryOnUnavailable(options.retry ?? {}));
  const tls = options.tls;
  return createGrpcTransport({
    baseUrl: `${tls ? "https" : "http"}://${options.address}`,
    interceptors,
    defaultTimeoutMs: options.defaultTimeoutMs,
    nodeOptions: tls ? { ca: tls.ca, cert: tls.cert, key: tls.key, servername: tls.serverName } : undefined,
  });
}

/** A client of every oma.v1 service on one transport. */
export interface OmaClients {
  serverInfo: Client<typeof ServerInfoService>;
  appliances: Client<typeof ApplianceService>;
  /** An appliance's join (join token + CSR), certificate renewal and its confirmation. */
  applianceIdentity: Client<typeof ApplianceIdentityService>;
  vmContexts: Client<typeof VmContextService>;
  replication: Client<typeof ReplicationService>;
  jobs: Client<typeof JobService>;
  volumes: Client<typeof VolumeService>;
  exports: Client<typeof NbdExportService>;
  failover: Client<typeof FailoverService>;
  networkMappings: Client<typeof NetworkMappingService>;
  /** The appliances' stream endpoint (what a VMA dials). */
  gateway: Client<typeof VmaGatewayService>;
}

export function createOmaClients(transport: Transport): OmaClients {
  return {
    serverInfo: createClient(ServerInfoService, transport),
    appliances: createClient(ApplianceService, transport),
    applianceIdentity: createClient(ApplianceIdentityService, transport),
    vmContexts: createClient(VmContextService, transport),
    replication: createClient(ReplicationService, transport),
    jobs: createClient(JobService, transport),
    volumes: createClient(VolumeService, transport),
    exports: createClient(NbdExportService, transport),
    failover: createClient(FailoverService, transport),
    networkMappings: createClient(NetworkMappingService, transport),
    gateway: createClient(VmaGatewayService, transport),
  };
}

/** `createOmaClients(createOmaTransport(options))`. */
export function connectOma(options: OmaConnectionOptions): OmaClients {
  return createOmaClients(createOmaTransport(options));
}
