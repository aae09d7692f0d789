/**
 * WatchJobs with automatic resume. The OMA's watch semantics: current states first (SNAPSHOT), then SYNCED, then
 * every CHANGE in revision order, PROGRESS_NOTIFY when idle. A cut stream resumes from the revision of the last
 * CHANGE, SYNCED or PROGRESS_NOTIFY and misses nothing; a revision the server no longer holds (OUT_OF_RANGE,
 * REVISION_COMPACTED) means "re-list": the watch starts again from 0, so a fresh snapshot follows.
 */
import { create } from "@bufbuild/protobuf";
import { Code, ConnectError } from "@connectrpc/connect";
import type { Client } from "@connectrpc/connect";
import { JobService, UpdateKind, WatchJobsRequestSchema, type JobUpdate } from "../oma/v1/job_pb.js";
import { backoffMs, sleep, type RetryPolicy } from "./retry.js";

export interface WatchJobsOptions {
  /** Only jobs of this VM context. */
  vmContextId?: string;
  /** Include finished jobs in the snapshot. */
  includeFinished?: boolean;
  /** Resume after this revision (0: start with a snapshot). */
  fromRevision?: bigint;
  /** Backoff between reconnects (attempts are unlimited; maxAttempts is ignored). */
  backoff?: RetryPolicy;
  /** Ends the watch. */
  signal?: AbortSignal;
  /** Called when the watch reconnects: from which revision and why. */
  onResume?: (fromRevision: bigint, error: ConnectError) => void;
}

/** The revision a watch resumes from after this update, or undefined when the update does not move it. */
export function resumePoint(update: JobUpdate): bigint | undefined {
  const moves = [UpdateKind.CHANGE, UpdateKind.SYNCED, UpdateKind.PROGRESS_NOTIFY];
  return moves.includes(update.kind) ? update.revision : undefined;
}

/** Every update of the jobs watched, across disconnects, until `signal` aborts or the caller stops iterating. */
export async function* watchJobs(
  jobs: Client<typeof JobService>,
  options: WatchJobsOptions = {},
): AsyncGenerator<JobUpdate> {
  // Our own signal for the calls: a caller that leaves its for-await early must end the HTTP/2 stream too, or the
  // open stream keeps the connection (and the Node process) alive.
  const calls = new AbortController();
  const stop = () => calls.abort(options.signal?.reason);
  if (options.signal?.aborted) return;
  options.signal?.addEventListener("abort", stop, { once: true });
  let from = options.fromRevision ?? 0n;
  let failures = 0;
  try {
    while (!calls.signal.aborted) {
      const request = create(WatchJobsRequestSchema, {
        vmContextId: options.vmContextId ?? "",
        includeFinished: options.includeFinished ?? false,
        fromRevision: from,
      });
      // No deadline (timeoutMs 0 overrides the transport's default): a watch runs until it is stopped.
      // Iterated by hand: a for-await would, when the caller stops, first await the stream's return() — which
      // waits for the next message — before the finally below could abort the call.
      const responses = jobs.watchJobs(request, { signal: calls.signal, timeoutMs: 0 })[Symbol.asyncIterator]();
      try {
        for (let next = await responses.next(); !next.done; next = await responses.next()) {
          const update = next.value.update;
          if (!update) continue;
          failures = 0;
          from = resumePoint(update) ?? from;
          yield update;
        }
      } catch (raw) {
        const error = ConnectError.from(raw);
        if (calls.signal.aborted || error.code === Code.Canceled) return;
        if (error.code === Code.OutOfRange) from = 0n; // history compacted: re-list through a new snapshot
        else if (error.code !== Code.Unavailable && error.code !== Code.Aborted) throw error;
        options.onResume?.(from, error);
      }
      failures += 1;
      await sleep(backoffMs(Math.min(failures, 16), options.backoff), calls.signal).catch(() => undefined);
    }
  } finally {
    options.signal?.removeEventListener("abort", stop);
    calls.abort();
  }
}
