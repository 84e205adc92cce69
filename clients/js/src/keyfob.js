// Keyfob for browser apps: sign in with OAuth 2.1 (authorization code + PKCE S256),
// keep and refresh the tokens, call the gateway. No runtime dependencies: it needs only
// fetch, Web Crypto and (for redirects) the DOM, so it also runs in Node 20+ and workers.

/** Refresh this long before the access token expires (clock skew, slow networks). */
const EXPIRY_MARGIN_MS = 60_000;
const PENDING_PREFIX = "keyfob:pending:";
const CALLBACK_MESSAGE = "keyfob:callback";
/** The SSE comment Keyfob puts before a stream's terminal event. */
const COST_COMMENT = /(?:^|\n): keyfob-cost-usd=([0-9.]+)\r?\n/;

/** An error answered by Keyfob (OAuth or gateway), with what an app needs to react. */
export class KeyfobError extends Error {
  constructor(message, { status = 0, code = null, type = null, body = null, headers = null } = {}) {
    super(message);
    this.name = "KeyfobError";
    this.status = status;
    this.code = code;
    this.type = type;
    this.body = body;
    /** `x-should-retry: false` (allowance exhausted) means: do not retry, tell the person. */
    this.shouldRetry = headers ? headers.get("x-should-retry") : null;
    this.retryAfterS = headers && headers.get("retry-after") ? Number(headers.get("retry-after")) : null;
    this.resetsAt = headers ? headers.get("x-keyfob-allowance-resets-at") : null;
  }
}

/** Where tokens live. "memory": gone on reload (safest against persistence by XSS);
 * "session": this tab (sessionStorage); "local": every tab, across restarts
 * (localStorage); or any object with get/set/remove (sync or async). */
export function storageFor(choice) {
  if (choice && typeof choice === "object") return choice;
  if (choice === "memory" || choice === undefined) return memoryStorage();
  const area = choice === "local" ? globalThis.localStorage : globalThis.sessionStorage;
  if (!area) throw new TypeError(`storage "${choice}" is not available here`);
  return {
    get: (key) => area.getItem(key),
    set: (key, value) => area.setItem(key, value),
    remove: (key) => area.removeItem(key),
  };
}

export function memoryStorage() {
  const map = new Map();
  return {
    get: (key) => (map.has(key) ? map.get(key) : null),
    set: (key, value) => void map.set(key, value),
    remove: (key) => void map.delete(key),
  };
}

function base64url(bytes) {
  let text = "";
  for (const b of bytes) text += String.fromCharCode(b);
  return btoa(text).replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
}

/** 256 random bits, base64url: a PKCE verifier (43 characters) or a state. */
export function randomString(bytes = 32) {
  return base64url(globalThis.crypto.getRandomValues(new Uint8Array(bytes)));
}

/** The S256 challenge of a verifier (RFC 7636 4.2). */
export async function s256(verifier) {
  const digest = await globalThis.crypto.subtle.digest("SHA-256", new TextEncoder().encode(verifier));
  return base64url(new Uint8Array(digest));
}

/** What Keyfob's headers say about a gateway answer (cost and what is left). */
export function costOf(response) {
  const h = response.headers;
  const num = (name) => (h.get(name) === null ? null : h.get(name));
  return {
    requestId: num("x-keyfob-request-id"),
    costUsd: num("x-keyfob-cost-usd"),
    reservedUsd: num("x-keyfob-reserved-usd"),
    allowanceLeftUsd: num("x-keyfob-allowance-left-usd"),
    resetsAt: num("x-keyfob-allowance-resets-at"),
  };
}

async function errorFrom(response) {
  let body = null;
  try {
    body = await response.json();
  } catch {
    body = null;
  }
  const e = body && typeof body === "object" ? body : {};
  const inner = e.error && typeof e.error === "object" ? e.error : null;
  const message =
    (inner && inner.message) || e.error_description || (typeof e.error === "string" ? e.error : null) ||
    `Keyfob answered ${response.status}`;
  const code = (inner && (inner.code || inner.type)) || (typeof e.error === "string" ? e.error : null);
  return new KeyfobError(message, {
    status: response.status,
    code,
    type: inner ? inner.type : null,
    body,
    headers: response.headers,
  });
}

export class Keyfob {
  /**
   * @param {object} options
   * @param {string} options.issuer   Keyfob's URL, e.g. "http://127.0.0.1:8787"
   * @param {string} options.clientId the app's client_id (registered, or a metadata document URL)
   * @param {string} options.redirectUri one of the app's registered redirect URIs
   */
  constructor({ issuer, clientId, redirectUri, storage = "session", fetch: fetchImpl, resource } = {}) {
    if (!issuer || !clientId || !redirectUri) throw new TypeError("issuer, clientId and redirectUri are required");
    this.issuer = issuer.replace(/\/+$/, "");
    this.clientId = clientId;
    this.redirectUri = redirectUri;
    this.resource = resource === undefined ? `${this.issuer}/v1` : resource;
    this.storage = storageFor(storage);
    this._fetch = fetchImpl || globalThis.fetch.bind(globalThis);
    this._key = `keyfob:tokens:${this.issuer}:${this.clientId}`;
    this._metadata = null;
    this._refreshing = null;
    this._costListeners = new Set();
    /** Bound, so it can be handed to SDKs as their `fetch`. */
    this.fetch = this.fetch.bind(this);
  }

  /** The gateway's base URL for OpenAI- and Anthropic-compatible SDKs. */
  get baseURL() {
    return `${this.issuer}/v1`;
  }

  /** RFC 8414 metadata (fetched once). */
  async discover() {
    if (!this._metadata) {
      const r = await this._fetch(`${this.issuer}/.well-known/oauth-authorization-server`);
      if (!r.ok) throw await errorFrom(r);
      this._metadata = await r.json();
    }
    return this._metadata;
  }

  /** The authorization URL and the pending request to keep until the redirect comes back.
   * `suggest` pre-fills the consent page: {capUsd, window: "day"|"week"|"month", models: [...],
   * expiresInS} (the person decides). */
  async authorizationUrl({ suggest = {}, extraParams = {}, mode = "redirect" } = {}) {
    const meta = await this.discover();
    const verifier = randomString(32);
    const state = randomString(16);
    const url = new URL(meta.authorization_endpoint);
    const params = {
      response_type: "code",
      client_id: this.clientId,
      redirect_uri: this.redirectUri,
      code_challenge: await s256(verifier),
      code_challenge_method: "S256",
      state,
      ...(this.resource ? { resource: this.resource } : {}),
      ...(suggest.capUsd !== undefined ? { keyfob_cap_usd: String(suggest.capUsd) } : {}),
      ...(suggest.window ? { keyfob_window: suggest.window } : {}),
      ...(suggest.models ? { keyfob_models: [].concat(suggest.models).join(" ") } : {}),
      ...(suggest.expiresInS !== undefined ? { keyfob_expires_in: String(suggest.expiresInS) } : {}),
      ...extraParams,
    };
    for (const [k, v] of Object.entries(params)) url.searchParams.set(k, v);
    const pending = { state, verifier, redirectUri: this.redirectUri, mode, at: Date.now() };
    pendingArea().setItem(PENDING_PREFIX + state, JSON.stringify(pending));
    return { url: url.toString(), state };
  }

  /**
   * Send the person to Keyfob to sign in and consent.
   * mode "redirect" (default): this page navigates away; call handleRedirect() on the
   * redirect URI's page. mode "popup": a window opens; resolves with the tokens once the
   * redirect URI's page (which calls handleRedirect()) hands the answer back.
   */
  async signIn({ mode = "redirect", suggest, extraParams, popupFeatures = "width=520,height=720" } = {}) {
    if (mode === "popup") {
      // Open the window first, in the click's user activation, then point it at Keyfob.
      const popup = globalThis.open("about:blank", "keyfob-sign-in", popupFeatures);
      if (!popup) throw new KeyfobError("the sign-in window was blocked", { code: "popup_blocked" });
      const { url, state } = await this.authorizationUrl({ suggest, extraParams, mode });
      popup.location.href = url;
      const callbackUrl = await waitForCallback(popup, state);
      return this.handleRedirect(callbackUrl);
    }
    const { url } = await this.authorizationUrl({ suggest, extraParams, mode });
    globalThis.location.assign(url);
    return new Promise(() => {}); // the page is going away
  }

  /**
   * On the redirect URI's page: finish the sign-in. Returns the tokens, or null when the
   * URL is not a Keyfob answer. In a popup it hands the URL to the opener and closes.
   * Checks the state (CSRF) and the issuer (RFC 9207, mix-up attacks) before using the code.
   */
  async handleRedirect(href = globalThis.location && globalThis.location.href) {
    const url = new URL(href);
    const state = url.searchParams.get("state");
    if (!state || !(url.searchParams.has("code") || url.searchParams.has("error"))) return null;
    const raw = pendingArea().getItem(PENDING_PREFIX + state);
    const opener = globalThis.window && globalThis.window.opener;
    const popup = opener && opener !== globalThis.window && (!raw || JSON.parse(raw).mode === "popup");
    if (popup) {
      // The popup: give the answer to the page that opened it (same origin only).
      opener.postMessage({ type: CALLBACK_MESSAGE, url: url.toString() }, globalThis.location.origin);
      globalThis.close();
      return null;
    }
    if (!raw) throw new KeyfobError("unknown or already used sign-in state", { code: "invalid_state" });
    pendingArea().removeItem(PENDING_PREFIX + state);
    const pending = JSON.parse(raw);
    const iss = url.searchParams.get("iss");
    // RFC 9207: a server that says it sends iss must send its own, always.
    const required = (await this.discover()).authorization_response_iss_parameter_supported === true;
    if (iss === null ? required : iss !== this.issuer) {
      throw new KeyfobError("the answer came from another authorization server", { code: "issuer_mismatch" });
    }
    clearQuery(url);
    if (url.searchParams.get("error")) {
      throw new KeyfobError(url.searchParams.get("error_description") || url.searchParams.get("error"), {
        code: url.searchParams.get("error"),
      });
    }
    return this._tokenRequest({
      grant_type: "authorization_code",
      code: url.searchParams.get("code"),
      redirect_uri: pending.redirectUri,
      code_verifier: pending.verifier,
    });
  }

  async _tokenRequest(form) {
    const meta = await this.discover();
    const body = new URLSearchParams({ ...form, client_id: this.clientId });
    const r = await this._fetch(meta.token_endpoint, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body,
    });
    if (!r.ok) {
      const error = await errorFrom(r);
      if (form.grant_type === "refresh_token" && error.code === "invalid_grant") await this.forget();
      throw error;
    }
    const t = await r.json();
    const tokens = {
      accessToken: t.access_token,
      refreshToken: t.refresh_token || null,
      expiresAt: Date.now() + (Number(t.expires_in) || 3600) * 1000,
      scope: t.scope || "",
    };
    await this.storage.set(this._key, JSON.stringify(tokens));
    return tokens;
  }

  /** The stored tokens, or null. */
  async tokens() {
    const raw = await this.storage.get(this._key);
    return raw ? JSON.parse(raw) : null;
  }

  async isSignedIn() {
    return (await this.tokens()) !== null;
  }

  /** A valid access token, refreshed first when it expires within a minute. Concurrent
   * callers share one refresh: refresh tokens rotate, and a replayed one revokes them all. */
  async accessToken({ forceRefresh = false } = {}) {
    const tokens = await this.tokens();
    if (!tokens) throw new KeyfobError("not signed in", { code: "not_signed_in", status: 401 });
    if (!forceRefresh && tokens.expiresAt - EXPIRY_MARGIN_MS > Date.now()) return tokens.accessToken;
    return (await this.refresh(tokens)).accessToken;
  }

  /** Trade the refresh token for new tokens (single flight). */
  refresh(current) {
    if (!this._refreshing) {
      this._refreshing = (async () => {
        const tokens = current || (await this.tokens());
        if (!tokens || !tokens.refreshToken) {
          await this.forget();
          throw new KeyfobError("signed out: sign in again", { code: "not_signed_in", status: 401 });
        }
        return this._tokenRequest({ grant_type: "refresh_token", refresh_token: tokens.refreshToken });
      })().finally(() => {
        this._refreshing = null;
      });
    }
    return this._refreshing;
  }

  /**
   * fetch() with the access token: refreshed before expiry, and once more after a 401
   * (a token revoked or expired meanwhile). Any Authorization or x-api-key a caller (an
   * SDK with a placeholder key) set is replaced.
   */
  async fetch(input, init = {}) {
    const send = async (token) => {
      const headers = new Headers(init.headers || (input instanceof Request ? input.headers : undefined));
      headers.delete("x-api-key");
      headers.set("authorization", `Bearer ${token}`);
      return this._fetch(input, { ...init, headers });
    };
    let answer = await send(await this.accessToken());
    if (answer.status === 401) answer = await send(await this.accessToken({ forceRefresh: true }));
    return this._costListeners.size && answer.ok ? this._watchCost(answer) : answer;
  }

  /**
   * Call `listener(cost)` with every gateway call's cost: from the headers for a whole
   * answer, from the stream's `: keyfob-cost-usd=` comment (which SDKs skip) when a
   * stream ends, so apps using the official SDKs still see what each call cost.
   * Returns a function that removes the listener.
   */
  onCost(listener) {
    this._costListeners.add(listener);
    return () => this._costListeners.delete(listener);
  }

  _emitCost(cost) {
    for (const listener of this._costListeners) {
      try {
        listener(cost);
      } catch (e) {
        queueMicrotask(() => {
          throw e;
        });
      }
    }
  }

  _watchCost(response) {
    const base = { ...costOf(response), streamed: false };
    const streamed = (response.headers.get("content-type") || "").startsWith("text/event-stream");
    if (!streamed || !response.body) {
      if (base.costUsd !== null) this._emitCost(base);
      return response;
    }
    // The headers of a stream carry the amount held; the exact cost comes at its end.
    const decoder = new TextDecoder();
    let tail = "";
    let found = false;
    const emit = (cost) => this._emitCost({ ...base, costUsd: cost, allowanceLeftUsd: null, streamed: true });
    const watch = new TransformStream({
      transform(chunk, controller) {
        controller.enqueue(chunk);
        if (found) return;
        const text = tail + decoder.decode(chunk, { stream: true });
        const m = COST_COMMENT.exec(text);
        if (m) {
          found = true;
          emit(m[1]);
          return;
        }
        const cut = text.lastIndexOf("\n");
        tail = cut >= 0 ? text.slice(cut) : "";
      },
    });
    return new Response(response.body.pipeThrough(watch), {
      status: response.status,
      statusText: response.statusText,
      headers: response.headers,
    });
  }

  async _json(path, init) {
    const r = await this.fetch(`${this.issuer}${path}`, init);
    if (!r.ok) throw await errorFrom(r);
    return r.json();
  }

  /** Worst-case and expected cost of a chat-completions body, and whether it fits now. */
  quote(body) {
    return this._json("/v1/keyfob/quote", {
      method: "POST",
      headers: { "content-type": "application/json" },
      body: JSON.stringify(body),
    });
  }

  /** Every limit of this app's allowance: cap, spent, held, left, reset time. */
  allowance() {
    return this._json("/v1/keyfob/allowance", { method: "GET" });
  }

  /** Options for `new OpenAI(...)` from the official `openai` package. */
  openaiOptions(extra = {}) {
    return { baseURL: this.baseURL, apiKey: "keyfob", dangerouslyAllowBrowser: true, fetch: this.fetch, ...extra };
  }

  /** Options for `new Anthropic(...)` from `@anthropic-ai/sdk`. */
  anthropicOptions(extra = {}) {
    return { baseURL: this.issuer, apiKey: "keyfob", dangerouslyAllowBrowser: true, fetch: this.fetch, ...extra };
  }

  /** Sign out: revoke the refresh token (its whole family, so every access token it
   * produced stops too) and forget the tokens. */
  async signOut() {
    const tokens = await this.tokens();
    await this.forget();
    if (!tokens) return;
    const meta = await this.discover();
    if (!meta.revocation_endpoint) return;
    const token = tokens.refreshToken || tokens.accessToken;
    const r = await this._fetch(meta.revocation_endpoint, {
      method: "POST",
      headers: { "content-type": "application/x-www-form-urlencoded" },
      body: new URLSearchParams({
        token,
        token_type_hint: tokens.refreshToken ? "refresh_token" : "access_token",
        client_id: this.clientId,
      }),
    });
    if (!r.ok) throw await errorFrom(r);
  }

  async forget() {
    await this.storage.remove(this._key);
  }
}

function pendingArea() {
  // Must survive the round trip to Keyfob: sessionStorage where there is one.
  return globalThis.sessionStorage || fallbackPending;
}

const fallbackMap = new Map();
const fallbackPending = {
  getItem: (k) => (fallbackMap.has(k) ? fallbackMap.get(k) : null),
  setItem: (k, v) => void fallbackMap.set(k, v),
  removeItem: (k) => void fallbackMap.delete(k),
};

function clearQuery(url) {
  const h = globalThis.history;
  if (h && globalThis.location && globalThis.location.href === url.toString()) {
    const clean = new URL(url);
    for (const k of ["code", "state", "iss", "error", "error_description", "error_uri"]) clean.searchParams.delete(k);
    h.replaceState(h.state, "", clean.toString());
  }
}

function waitForCallback(popup, state) {
  return new Promise((resolve, reject) => {
    const onMessage = (event) => {
      if (event.origin !== globalThis.location.origin || event.source !== popup) return;
      const data = event.data;
      if (!data || data.type !== CALLBACK_MESSAGE) return;
      if (new URL(data.url).searchParams.get("state") !== state) return;
      cleanup();
      resolve(data.url);
    };
    const timer = setInterval(() => {
      if (popup.closed) {
        cleanup();
        reject(new KeyfobError("the sign-in window was closed", { code: "popup_closed" }));
      }
    }, 500);
    const cleanup = () => {
      clearInterval(timer);
      globalThis.removeEventListener("message", onMessage);
    };
    globalThis.addEventListener("message", onMessage);
  });
}
