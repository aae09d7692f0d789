/**
 * The bidirectional VMA stream and the WatchJobs server stream against a real oma-server: a VMA written in
 * TypeScript says hello, is sent a discover command and a start_replication command, reports progress and events
 * and receives the acks, while an operator watches the whole replication to COMPLETED.
 */
import assert from "node:assert/strict";
import { test } from "node:test";
import { Code, ConnectError } from "@connectrpc/connect";
import { ConnectionState } from "../oma/v1/appliance_pb.js";
import { UpdateKind, type JobUpdate } from "../oma/v1/job_pb.js";
import { ReplicationJobStatus } from "../oma/v1/replication_pb.js";
import { StreamErrorCode } from "../vma/v1/stream_pb.js";
import { errorInfo, watchJobs } from "../sdk/index.js";
import { clients, runTag } from "./env.js";
import { MiniVma, sampleVm, Waiters } from "./mini-vma.js";

const oma = clients();

async function enrolledVma(name: string, tag: string): Promise<MiniVma> {
  const enrolled = await oma.appliances.enrollAppliance({ name });
  return new MiniVma(oma.gateway, enrolled.appliance!.id, enrolled.credential, sampleVm(tag));
}

test("a TypeScript VMA replicates a VM while WatchJobs follows it to COMPLETED", { timeout: 90_000 }, async () => {
  const vma = await enrolledVma(`ts-vma-${runTag}`, `${runTag}1`);
  const welcome = await vma.connect();
  assert.ok(welcome.sessionId, "the welcome names the session");
  assert.ok((welcome.heartbeatInterval?.seconds ?? 0n) > 0n, "and the heartbeat interval");
  assert.deepEqual(welcome.openJobs, [], "a new appliance has no open job");
  const appliance = (await oma.appliances.getAppliance({ id: vma.applianceId })).appliance!;
  assert.equal(appliance.connectionState, ConnectionState.CONNECTED);
  assert.equal(appliance.agentVersion, "mini-vma-ts-1");

  // Discovery is a command to the appliance; its answer registers the VM.
  const found = await oma.vmContexts.discoverVms({ applianceId: vma.applianceId, register: true, timeoutSeconds: 20 });
  assert.equal(vma.commands[0]?.kind.case, "discover");
  await vma.responses.next(
    (r) => r.message.case === "commandResultAck" && r.message.value.commandId === vma.commands[0].commandId,
    10_000,
    "the ack of the discover result",
  );
  assert.equal(found.vmContexts.length, 1);
  const vm = found.vmContexts[0];
  assert.equal(vm.name, vma.vm.name);
  assert.equal(vm.disks.length, 2);

  // Watch every job of this VM from before the start, through the whole replication.
  const watching = new AbortController();
  const updates = new Waiters<JobUpdate>();
  const watcher = (async () => {
    for await (const update of watchJobs(oma.jobs, { vmContextId: vm.id, signal: watching.signal })) updates.push(update);
  })();
  const synced = await updates.next((u) => u.kind === UpdateKind.SYNCED, 10_000, "SYNCED");

  const started = await oma.replication.startReplication({ vmContextId: vm.id, requestId: `ts-${runTag}` });
  const jobId = started.job!.id;
  const isCompleted = (u: JobUpdate) =>
    u.job.case === "replicationJob" && u.job.value.id === jobId && u.job.value.status === ReplicationJobStatus.COMPLETED;
  const last = await updates.next(isCompleted, 60_000, "the job's COMPLETED update");
  const copy = await vma.copies.next((c) => c.jobId === jobId, 10_000, "the copy's end");
  watching.abort();
  await watcher;

  // The commands the appliance got, in order, each answered.
  assert.deepEqual(
    vma.commands.map((c) => c.kind.case),
    ["discover", "startReplication"],
  );
  const start = vma.commands[1].kind.value as { disks: { nbdUri: string }[] };
  assert.equal(start.disks.length, 2);
  for (const disk of start.disks) assert.match(disk.nbdUri, /^nbd:\/\/127\.0\.0\.1:\d+\//);

  // Acks: every sequence up to the last was acked, cumulatively and in order.
  const acks = vma.responses.seen
    .filter((r) => r.message.case === "ack" && r.message.value.jobId === jobId)
    .map((r) => (r.message.value as { sequence: bigint }).sequence);
  assert.ok(acks.length >= 1 && acks.at(-1) === copy.lastSequence, `acked up to ${copy.lastSequence}: ${acks}`);
  assert.deepEqual([...acks].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0)), acks, "acks never go backwards");

  // The watch: changes of this job in revision order, after SYNCED, ending COMPLETED at 100 %.
  const changes = updates.seen.filter(
    (u) => u.kind === UpdateKind.CHANGE && u.job.case === "replicationJob" && u.job.value.id === jobId,
  );
  const revisions = changes.map((u) => u.revision);
  assert.ok(revisions.every((r, i) => i === 0 || r > revisions[i - 1]), `revisions grow: ${revisions}`);
  assert.ok(revisions[0] > synced.revision, "every change comes after SYNCED");
  const statuses = changes.map((u) => (u.job.value as { status: ReplicationJobStatus }).status);
  assert.ok(statuses.includes(ReplicationJobStatus.REPLICATING), `seen replicating: ${statuses}`);
  const percents = changes.map((u) => (u.job.value as { percent: number }).percent);
  assert.ok(percents.every((p, i) => i === 0 || p >= percents[i - 1]), `percent never moves back: ${percents}`);
  const final = last.job.value as { percent: number; bytesDone: bigint; bytesTotal: bigint; disks: { newChangeId: string; completed: boolean }[] };
  assert.equal(final.percent, 100);
  assert.equal(final.bytesDone, final.bytesTotal);
  assert.equal(final.bytesTotal, (64n + 32n) << 20n);
  assert.ok(final.disks.every((d) => d.completed && d.newChangeId.startsWith("cid-")));

  const job = (await oma.replication.getReplicationJob({ id: jobId })).job!;
  assert.equal(job.status, ReplicationJobStatus.COMPLETED);
  assert.equal(job.lastSequence, copy.lastSequence);

  // A message about a job the OMA does not know is refused alone; the stream stays open.
  await vma.send({ case: "progress", value: { jobId: "no-such-job", sequence: 1n, bytesDone: 1n, bytesTotal: 2n } });
  const refused = await vma.streamError((e) => e.jobId === "no-such-job");
  assert.equal(refused.code, StreamErrorCode.UNKNOWN_JOB);
  assert.match(refused.message, /no-such-job/);
  await vma.send({ case: "heartbeat", value: { runningJobIds: [] } });
  vma.close();
  await vma.closed;
});

test("a hello with a wrong credential ends the stream UNAUTHENTICATED with its ErrorInfo", { timeout: 90_000 }, async () => {
  const enrolled = await oma.appliances.enrollAppliance({ name: `ts-badcred-${runTag}` });
  const vma = new MiniVma(oma.gateway, enrolled.appliance!.id, "not-the-credential", sampleVm(`${runTag}2`));
  await assert.rejects(vma.connect(), (raw: unknown) => {
    const error = ConnectError.from(raw);
    assert.equal(error.code, Code.Unauthenticated);
    assert.ok(errorInfo(error)?.reason, "the refusal names its reason");
    return true;
  });
});
