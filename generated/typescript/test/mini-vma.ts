/**
 * A VMware Migration Appliance written in TypeScript, as small as an honest one can be: it dials the OMA's gateway,
 * says hello, answers commands (discover with one VM, start_replication by "copying" — reporting progress and
 * events with one growing sequence per job) and records every ack and stream error it receives.
 */
import { create, type MessageInitShape } from "@bufbuild/protobuf";
import { timestampNow } from "@bufbuild/protobuf/wkt";
import type { Client } from "@connectrpc/connect";
import { createWritableIterable, type WritableIterable } from "@connectrpc/connect/protocol";
import {
  ConnectRequestSchema,
  type ConnectRequest,
  type ConnectResponse,
  VmaGatewayService,
} from "../oma/v1/gateway_pb.js";
import { Firmware, PowerState, VirtualMachineSchema, type VirtualMachine } from "../oma/common/v1/inventory_pb.js";
import { CopyMode, CopyPhase } from "../oma/common/v1/jobs_pb.js";
import {
  CommandOutcome,
  type Command,
  type StartReplicationCommand,
  type StreamError,
  type Welcome,
} from "../vma/v1/stream_pb.js";

type Outgoing = MessageInitShape<typeof ConnectRequestSchema>["message"];

/** Resolves when `predicate` holds for a value pushed later (or already pushed). */
export class Waiters<T> {
  readonly seen: T[] = [];
  private waiting: { predicate: (value: T) => boolean; resolve: (value: T) => void }[] = [];

  push(value: T): void {
    this.seen.push(value);
    this.waiting = this.waiting.filter((w) => (w.predicate(value) ? (w.resolve(value), false) : true));
  }

  next(predicate: (value: T) => boolean, timeoutMs = 20_000, what = "a message"): Promise<T> {
    const found = this.seen.find(predicate);
    if (found !== undefined) return Promise.resolve(found);
    return new Promise<T>((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)), timeoutMs);
      timer.unref(); // a wait that lost a race (the welcome of a refused hello) must not keep the process alive
      this.waiting.push({
        predicate,
        resolve: (value) => {
          clearTimeout(timer);
          resolve(value);
        },
      });
    });
  }
}

export class MiniVma {
  readonly responses = new Waiters<ConnectResponse>();
  readonly commands: Command[] = [];
  welcome?: Welcome;
  /** Ends when the OMA closes the stream; rejects with its status. */
  closed?: Promise<void>;
  private requests?: WritableIterable<ConnectRequest>;
  private readonly sequences = new Map<string, bigint>();

  constructor(
    private readonly gateway: Client<typeof VmaGatewayService>,
    readonly applianceId: string,
    private readonly credential: string,
    /** The VM this appliance "sees" (answer to a discover command). */
    readonly vm: VirtualMachine,
  ) {}

  /** Dial, say hello, wait for the welcome. */
  async connect(): Promise<Welcome> {
    this.requests = createWritableIterable<ConnectRequest>();
    const stream = this.gateway.connect(this.requests, { timeoutMs: 0 }); // the appliance's stream lives on
    this.closed = (async () => {
      for await (const response of stream) {
        this.responses.push(response);
        if (response.message.case === "command") void this.handle(response.message.value);
      }
    })();
    this.closed.catch(() => undefined); // observed by the tests that expect it
    await this.send({
      case: "hello",
      value: { applianceId: this.applianceId, credential: this.credential, agentVersion: "mini-vma-ts-1" },
    });
    // The welcome, or the stream's end (a refused hello ends it with UNAUTHENTICATED).
    const ended = this.closed.then(() => Promise.reject(new Error("the OMA ended the stream before the welcome")));
    const first = await Promise.race([this.responses.next((r) => r.message.case === "welcome", 10_000, "the welcome"), ended]);
    this.welcome = first.message.value as Welcome;
    return this.welcome;
  }

  async send(message: Outgoing): Promise<void> {
    if (!this.requests) throw new Error("not connected");
    await this.requests.write(create(ConnectRequestSchema, { message }));
  }

  close(): void {
    this.requests?.close();
  }

  /** The next sequence of a job: one counter shared by its progress reports and events. */
  private nextSequence(jobId: string): bigint {
    const next = (this.sequences.get(jobId) ?? 0n) + 1n;
    this.sequences.set(jobId, next);
    return next;
  }

  /** Waits until the OMA acked `sequence` of `jobId` (acks are cumulative). */
  acked(jobId: string, sequence: bigint): Promise<ConnectResponse> {
    return this.responses.next(
      (r) => r.message.case === "ack" && r.message.value.jobId === jobId && r.message.value.sequence >= sequence,
      20_000,
      `the ack of ${jobId} #${sequence}`,
    );
  }

  streamError(predicate: (error: StreamError) => boolean): Promise<StreamError> {
    return this.responses
      .next((r) => r.message.case === "error" && predicate(r.message.value), 10_000, "a stream error")
      .then((r) => r.message.value as StreamError);
  }

  private async handle(command: Command): Promise<void> {
    this.commands.push(command);
    switch (command.kind.case) {
      case "discover":
        await this.send({
          case: "commandResult",
          value: {
            commandId: command.commandId,
            outcome: CommandOutcome.SUCCEEDED,
            payload: { case: "discovery", value: { virtualMachines: [this.vm] } },
          },
        });
        break;
      case "startReplication":
        await this.send({
          case: "commandResult",
          value: { commandId: command.commandId, outcome: CommandOutcome.SUCCEEDED, detail: "copy started" },
        });
        void this.copy(command.kind.value);
        break;
      default:
        await this.send({
          case: "commandResult",
          value: { commandId: command.commandId, outcome: CommandOutcome.REJECTED, detail: "not supported here" },
        });
    }
  }

  /** Resolves with the last sequence of a job once its copy has been reported and acked whole. */
  readonly copies = new Waiters<{ jobId: string; lastSequence: bigint }>();

  /** A simulated copy: started, progress at 50 %, each disk completed, progress at 100 %, completed. */
  private async copy(start: StartReplicationCommand): Promise<void> {
    const jobId = start.jobId;
    this.sequences.set(jobId, start.lastAppliedSequence);
    const total = start.disks.reduce((sum, d) => sum + d.capacityBytes, 0n);
    const event = async (value: Extract<Outgoing, { case: "event" }>["value"]) => {
      const sequence = this.nextSequence(jobId);
      await this.send({ case: "event", value: { ...value, jobId, sequence, occurredAt: timestampNow() } });
      return sequence;
    };
    const report = async (fraction: { num: bigint; den: bigint }, phase: CopyPhase) => {
      const sequence = this.nextSequence(jobId);
      const done = (total * fraction.num) / fraction.den;
      await this.send({
        case: "progress",
        value: {
          jobId,
          sequence,
          phase,
          currentOperation: `copying ${done} of ${total} bytes`,
          bytesDone: done,
          bytesTotal: total,
          throughputBytesPerSecond: 64n << 20n,
          disks: start.disks.map((d) => ({
            diskId: d.diskId,
            bytesDone: (d.capacityBytes * fraction.num) / fraction.den,
            bytesTotal: d.capacityBytes,
            throughputBytesPerSecond: 32n << 20n,
            phase,
            mode: CopyMode.FULL,
          })),
          sentAt: timestampNow(),
        },
      });
      return sequence;
    };
    await this.acked(jobId, await event({ event: { case: "started", value: { sourceSnapshot: "snap-ts-1" } } }));
    await this.acked(jobId, await report({ num: 1n, den: 2n }, CopyPhase.COPYING));
    for (const disk of start.disks) {
      const value = { diskId: disk.diskId, changeId: `cid-${disk.diskId}`, bytesCopied: disk.capacityBytes, mode: CopyMode.FULL };
      await this.acked(jobId, await event({ event: { case: "diskCompleted", value } }));
    }
    await this.acked(jobId, await report({ num: 1n, den: 1n }, CopyPhase.DONE));
    const last = await event({ event: { case: "completed", value: { bytesCopied: total } } });
    await this.acked(jobId, last);
    this.copies.push({ jobId, lastSequence: last });
  }
}

/** A VM with small disks, as vCenter would describe it; `tag` keeps names and ids unique per test. */
export function sampleVm(tag: string, diskMiB: number[] = [64, 32]): VirtualMachine {
  return create(VirtualMachineSchema, {
    vcenter: "vcenter.test",
    datacenter: "dc-1",
    uuid: `42${tag.padStart(6, "0").slice(-6)}-0000-4000-8000-000000000001`,
    moref: `vm-${tag}`,
    name: `web-${tag}`,
    numCpus: 2,
    memoryMib: 2048n,
    guestOs: "ubuntu64Guest",
    firmware: Firmware.BIOS,
    disks: diskMiB.map((mib, i) => ({
      key: 2000 + i,
      label: `Hard disk ${i + 1}`,
      capacityBytes: BigInt(mib) << 20n,
      datastorePath: `[datastore1] web-${tag}/web-${tag}_${i}.vmdk`,
      cbtEnabled: true,
      unitNumber: i,
    })),
    powerState: PowerState.POWERED_ON,
  });
}
