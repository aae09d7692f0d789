/**
 * Example: list the appliances and VMs an OMA knows, then follow every job live (resuming across disconnects).
 *
 *   npm run build && node dist/examples/watch-jobs.js --server 127.0.0.1:50051 [--ca ca.pem] [--token-file F]
 *
 * `--until-synced` stops after the current state (what the SDK's test runs).
 */
import { readFileSync } from "node:fs";
import { parseArgs } from "node:util";
import { ConnectionState } from "../oma/v1/appliance_pb.js";
import { UpdateKind } from "../oma/v1/job_pb.js";
import { ReplicationJobStatus } from "../oma/v1/replication_pb.js";
import { FailoverJobStatus } from "../oma/v1/failover_pb.js";
import { connectOma, describeError, watchJobs } from "../sdk/index.js";

const { values: flags } = parseArgs({
  options: {
    server: { type: "string", default: process.env.OMA_SERVER ?? "127.0.0.1:50051" },
    ca: { type: "string" },
    "token-file": { type: "string" },
    "until-synced": { type: "boolean", default: false },
  },
});

const oma = connectOma({
  address: flags.server!,
  tls: flags.ca ? { ca: readFileSync(flags.ca) } : undefined,
  token: flags["token-file"] ? readFileSync(flags["token-file"], "utf8").trim() : undefined,
  defaultTimeoutMs: 30_000,
});

const name = (enumType: Record<number, string>, value: number) => enumType[value]?.toLowerCase() ?? String(value);

async function main(): Promise<void> {
  const { appliances } = await oma.appliances.listAppliances({ pageSize: 1000 });
  console.log(`${appliances.length} appliance(s)`);
  for (const a of appliances) console.log(`  ${a.id}  ${a.name}  ${name(ConnectionState, a.connectionState)}`);
  const { vmContexts } = await oma.vmContexts.listVmContexts({ pageSize: 1000 });
  console.log(`${vmContexts.length} VM(s)`);
  for (const vm of vmContexts) console.log(`  ${vm.id}  ${vm.name}  ${vm.disks.length} disk(s)`);

  const stop = new AbortController();
  process.once("SIGINT", () => stop.abort());
  const updates = watchJobs(oma.jobs, {
    includeFinished: true,
    signal: stop.signal,
    onResume: (from, error) => console.error(`watch cut (${describeError(error)}); resuming after revision ${from}`),
  });
  for await (const update of updates) {
    if (update.kind === UpdateKind.SYNCED) {
      console.log(`-- synced at revision ${update.revision}`);
      if (flags["until-synced"]) break;
    } else if (update.job.case === "replicationJob") {
      const job = update.job.value;
      const status = name(ReplicationJobStatus, job.status);
      console.log(`job ${job.id}  ${status}  ${job.percent.toFixed(1)} %  ${job.bytesDone}/${job.bytesTotal} bytes`);
    } else if (update.job.case === "failoverJob") {
      const job = update.job.value;
      console.log(`failover ${job.id}  ${name(FailoverJobStatus, job.status)}  step ${job.currentStep || "-"}`);
    }
  }
}

main().catch((error: unknown) => {
  console.error(`watch-jobs: ${describeError(error)}`);
  process.exit(1);
});
