/** Token storage: a named choice or your own (sync or async) store. */
export interface TokenStore {
  get(key: string): string | null | Promise<string | null>;
  set(key: string, value: string): void | Promise<void>;
  remove(key: string): void | Promise<void>;
}
export type StorageChoice = "memory" | "session" | "local" | TokenStore;

export interface KeyfobOptions {
  /** Keyfob's URL, e.g. "http://127.0.0.1:8787". */
  issuer: string;
  /** The app's client_id: registered, or the https URL of its Client ID Metadata Document. */
  clientId: string;
  /** One of the app's registered redirect URIs (exact match). */
  redirectUri: string;
  /** Where tokens live; default "session" (this tab). */
  storage?: StorageChoice;
  /** The fetch to use (tests, workers); default globalThis.fetch. */
  fetch?: typeof fetch;
  /** RFC 8707 resource; default `${issuer}/v1`; null to leave it out. */
  resource?: string | null;
}

/** Pre-fills the consent page; the person may change every value. */
export interface AllowanceSuggestion {
  capUsd?: string | number;
  window?: "day" | "week" | "month";
  /** Canonical model ids such as "openai/gpt-4o-mini". */
  models?: string | string[];
  /** Seconds until the grant ends by itself (60 s to 366 days). */
  expiresInS?: number;
}

export interface SignInOptions {
  mode?: "redirect" | "popup";
  suggest?: AllowanceSuggestion;
  extraParams?: Record<string, string>;
  popupFeatures?: string;
}

export interface Tokens {
  accessToken: string;
  refreshToken: string | null;
  /** Milliseconds since the epoch. */
  expiresAt: number;
  scope: string;
}

export interface Cost {
  requestId: string | null;
  costUsd: string | null;
  reservedUsd: string | null;
  allowanceLeftUsd: string | null;
  resetsAt: string | null;
}

export interface CallCost extends Cost {
  /** True for a stream: the cost came from its end; allowanceLeftUsd is then null. */
  streamed: boolean;
}

export interface LimitState {
  limit: string;
  key: string;
  cap_usd: string;
  spent_usd: string;
  held_usd: string;
  left_usd: string;
  resets_at: string | null;
}

export interface Allowance {
  object: "keyfob.allowance";
  grant_id: string;
  models: string[];
  limits: LimitState[];
  /** When the grant ends by itself (ISO 8601, UTC); null: never. */
  expires_at?: string | null;
}

export interface Quote {
  object: "keyfob.quote";
  model: string;
  price_source: string;
  worst_case: { input_tokens: number; output_tokens: number; cost_usd: string };
  expected: { input_tokens: number; output_tokens: number; output_basis: string; cost_usd: string };
  allowed: boolean;
  refused_by: string | null;
  retry_at: string | null;
  limits: LimitState[];
}

export interface SdkOptions {
  baseURL: string;
  apiKey: string;
  dangerouslyAllowBrowser: true;
  fetch: typeof fetch;
  [extra: string]: unknown;
}

export class KeyfobError extends Error {
  status: number;
  code: string | null;
  type: string | null;
  body: unknown;
  /** "false" when retrying cannot help (allowance exhausted until its reset). */
  shouldRetry: string | null;
  retryAfterS: number | null;
  resetsAt: string | null;
}

export class Keyfob {
  constructor(options: KeyfobOptions);
  readonly issuer: string;
  readonly clientId: string;
  readonly redirectUri: string;
  /** `${issuer}/v1`. */
  readonly baseURL: string;
  discover(): Promise<Record<string, unknown>>;
  authorizationUrl(options?: {
    suggest?: AllowanceSuggestion;
    extraParams?: Record<string, string>;
    mode?: "redirect" | "popup";
  }): Promise<{ url: string; state: string }>;
  signIn(options?: SignInOptions): Promise<Tokens>;
  handleRedirect(href?: string): Promise<Tokens | null>;
  tokens(): Promise<Tokens | null>;
  isSignedIn(): Promise<boolean>;
  accessToken(options?: { forceRefresh?: boolean }): Promise<string>;
  refresh(current?: Tokens): Promise<Tokens>;
  fetch(input: RequestInfo | URL, init?: RequestInit): Promise<Response>;
  onCost(listener: (cost: CallCost) => void): () => void;
  quote(body: Record<string, unknown>): Promise<Quote>;
  allowance(): Promise<Allowance>;
  openaiOptions(extra?: Record<string, unknown>): SdkOptions;
  anthropicOptions(extra?: Record<string, unknown>): SdkOptions;
  signOut(): Promise<void>;
  forget(): Promise<void>;
}

export function storageFor(choice?: StorageChoice): TokenStore;
export function memoryStorage(): TokenStore;
export function randomString(bytes?: number): string;
export function s256(verifier: string): Promise<string>;
export function costOf(response: Response): Cost;
