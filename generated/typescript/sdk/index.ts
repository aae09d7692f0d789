/** The OMA's TypeScript SDK: generated clients (../oma, ../vma) plus the few helpers the raw client lacks. */
export {
  codeName,
  describeError,
  errorInfo,
  fieldViolations,
  OMA_ERROR_DOMAIN,
  preconditionViolations,
  resourceInfos,
} from "./errors.js";
export { backoffMs, retryOnUnavailable, sleep, type RetryPolicy } from "./retry.js";
export {
  bearerToken,
  connectOma,
  createOmaClients,
  createOmaTransport,
  type OmaClients,
  type OmaConnectionOptions,
  type TlsOptions,
} from "./transport.js";
export { resumePoint, watchJobs, type WatchJobsOptions } from "./watch.js";
