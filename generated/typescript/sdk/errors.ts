/**
 * The OMA's errors in TypeScript: every refusal carries one google.rpc.ErrorInfo (AIP-193) with an UPPER_SNAKE
 * reason, the domain "oma.control-plane" and metadata naming the resource. Decode it with `errorInfo`; the typed
 * details beside it with `fieldViolations` (BadRequest), `preconditionViolations` (PreconditionFailure: failed
 * readiness checks, the active job) and `resourceInfos` (ResourceInfo).
 */
import { Code, ConnectError } from "@connectrpc/connect";
import {
  BadRequestSchema,
  ErrorInfoSchema,
  PreconditionFailureSchema,
  ResourceInfoSchema,
  type BadRequest_FieldViolation,
  type ErrorInfo,
  type PreconditionFailure_Violation,
  type ResourceInfo,
} from "../google/rpc/error_details_pb.js";

export const OMA_ERROR_DOMAIN = "oma.control-plane";

/** The ErrorInfo of a failed call, or undefined when the error carries none (a connection failure, say). */
export function errorInfo(error: unknown): ErrorInfo | undefined {
  return ConnectError.from(error).findDetails(ErrorInfoSchema)[0];
}

/** The fields of a bad request (INVALID_ARGUMENT): `field` is the path, `description` what is wrong. */
export function fieldViolations(error: unknown): BadRequest_FieldViolation[] {
  return ConnectError.from(error)
    .findDetails(BadRequestSchema)
    .flatMap((d) => d.fieldViolations);
}

/** Unmet preconditions: type READINESS_CHECK (subject: the check's name) or JOB_ALREADY_ACTIVE (subject: jobs/<id>). */
export function preconditionViolations(error: unknown): PreconditionFailure_Violation[] {
  return ConnectError.from(error)
    .findDetails(PreconditionFailureSchema)
    .flatMap((d) => d.violations);
}

/** The resources the error is about (resourceType such as "oma.v1.Job", resourceName its id). */
export function resourceInfos(error: unknown): ResourceInfo[] {
  return ConnectError.from(error).findDetails(ResourceInfoSchema);
}

/** gRPC's name of a code, as the OMA's messages, grpcurl and omactl spell it: Code.NotFound → "NOT_FOUND". */
export function codeName(code: Code): string {
  return Code[code].replace(/([a-z])([A-Z])/g, "$1_$2").toUpperCase();
}

/** One line for a failed call, the way omactl prints it: `NOT_FOUND: job j-1 does not exist ... (JOB_NOT_FOUND)`. */
export function describeError(error: unknown): string {
  const failure = ConnectError.from(error);
  const reason = errorInfo(failure)?.reason;
  const text = `${codeName(failure.code)}: ${failure.rawMessage}`;
  return reason ? `${text} (${reason})` : text;
}
