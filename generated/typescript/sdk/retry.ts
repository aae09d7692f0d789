/**
 * Retries of unary calls the OMA answered UNAVAILABLE (AIP-194: the only code that says "the request was not
 * processed, try again"). Exponential backoff with full jitter; streams are never retried here, because a stream
 * may already have delivered messages — resume watches from their last revision instead (see watch.ts).
 */
import { Code, ConnectError, type Interceptor } from "@connectrpc/connect";

export interface RetryPolicy {
  /** Attempts in all, the first included (default 5; 1 turns retries off). */
  maxAttempts?: number;
  /** Upper bound of the first backoff in milliseconds (default 100); doubles per attempt. */
  initialBackoffMs?: number;
  /** Upper bound of any backoff in milliseconds (default 5000). */
  maxBackoffMs?: number;
  /** Called before each retry: for logs and tests. */
  onRetry?: (attempt: number, error: ConnectError, delayMs: number) => void;
}

/** A delay in [0, min(max, initial * 2^(attempt-1))): full jitter keeps many clients from retrying in step. */
export function backoffMs(attempt: number, policy: RetryPolicy = {}): number {
  const initial = policy.initialBackoffMs ?? 100;
  const max = policy.maxBackoffMs ?? 5000;
  return Math.random() * Math.min(max, initial * 2 ** (attempt - 1));
}

/** Resolves after `ms`, or rejects at once when `signal` aborts. */
export function sleep(ms: number, signal?: AbortSignal): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) return reject(signal.reason);
    const timer = setTimeout(() => {
      signal?.removeEventListener("abort", onAbort);
      resolve();
    }, ms);
    const onAbort = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener("abort", onAbort, { once: true });
  });
}

/** An interceptor that retries unary calls answered UNAVAILABLE, up to `maxAttempts` in all. */
export function retryOnUnavailable(policy: RetryPolicy = {}): Interceptor {
  const maxAttempts = Math.max(1, policy.maxAttempts ?? 5);
  return (next) => async (req) => {
    if (req.stream) return next(req);
    for (let attempt = 1; ; attempt++) {
      try {
        return await next(req);
      } catch (raw) {
        const error = ConnectError.from(raw);
        if (error.code !== Code.Unavailable || attempt >= maxAttempts || req.signal.aborted) throw error;
        const delay = backoffMs(attempt, policy);
        policy.onRetry?.(attempt, error, delay);
        await sleep(delay, req.signal);
      }
    }
  };
}
