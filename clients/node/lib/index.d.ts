/** Counts and detail of a finished step (all optional; outcome defaults to 'success'). */
export interface StepResult {
  outcome?: 'success' | 'failure' | 'skipped' | string | boolean;
  created?: number;
  updated?: number;
  skipped?: number;
  failed?: number;
  detail?: unknown;
}

export interface ErrorRecord {
  stepName: string;
  stepId?: string | null;
  memberIdentifier?: string | null;
  errorMessage?: string | Error;
  errorStack?: string | null;
}

export interface RunTrackerOptions {
  clubSlug?: string;
  socket?: string;
  spool?: string;
  memberKeys?: string[];
  captureArgv?: boolean;
  client?: Client;
  clientOptions?: Partial<typeof DEFAULTS>;
}

export class RunTracker {
  constructor(pipeline: string, options?: RunTrackerOptions);
  runId: string | null;
  readonly client: Client | null;
  startRun(parent?: string): string | null;
  startStep(name: string): string | null;
  endStep(stepId: string | null, result?: StepResult): null;
  recordError(error: ErrorRecord): string | null;
  recordErrors(stepName: string, stepId: string | null, errors: unknown[] | number | null | undefined): number | null;
  endRun(success?: boolean, stats?: unknown): null;
  close(): null;
  flush(timeoutMs?: number): Promise<boolean>;
}

export class Client {
  constructor(socketPath: string, spoolDir: string, options?: Partial<typeof DEFAULTS>);
  emit(event: Record<string, unknown>): void;
  flush(timeoutMs?: number): Promise<boolean>;
  readonly state: string;
  readonly unacked: number;
}

export const DEFAULTS: {
  flushTimeoutMs: number;
  window: number;
  maxOut: number;
  backoffInitialMs: number;
  backoffMaxMs: number;
  connectTimeoutMs: number;
  daemonUser: string | null;
};
export const PARENT_ENV: 'RUNTALLY_PARENT_RUN';
export function getClient(socketPath: string, spoolDir: string, options?: Partial<typeof DEFAULTS>): Client;
export function redactArgv(argv: string[]): string[];
export function uuid7(ms?: number): string;
