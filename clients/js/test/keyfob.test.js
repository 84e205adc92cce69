// node --test: the client against a scripted Keyfob (a fetch that answers like the
// server does). The real server and a real browser are exercised by the Python suite
// (tests/test_example_spa.py).
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import { test } from "node:test";

import { Keyfob, KeyfobError, costOf, memoryStorage, randomString, s256, storageFor } from "../src/keyfob.js";

const ISSUER = "http://127.0.0.1:8787";
const CB = "http://127.0.0.1:5173/callback";

/** A scripted Keyfob: records requests, answers discovery, token, revocation, gateway. */
function fakeKeyfob({ accessLifetimeS = 3600, issParameter = false } = {}) {
  const calls = [];
  let n = 0;
  let live = new Set();
  let refresh = null;
  const json = (status, body, headers = {}) =>
    new Response(JSON.stringify(body), { status, headers: { "content-type": "application/json", ...headers } });
  const issue = () => {
    n += 1;
    const access = `kfat_${n}`;
    refresh = `kfrt_${n}`;
    live.add(access);
    return json(200, { access_token: access, refresh_token: refresh, token_type: "Bearer", expires_in: accessLifetimeS });
  };
  const fetch = async (input, init = {}) => {
    const url = new URL(typeof input === "string" ? input : input.url);
    const headers = new Headers(init.headers);
    const body = init.body instanceof URLSearchParams ? Object.fromEntries(init.body) : init.body;
    calls.push({ path: url.pathname, method: init.method || "GET", headers, body });
    if (url.pathname === "/.well-known/oauth-authorization-server") {
      return json(200, {
        issuer: ISSUER,
        authorization_endpoint: `${ISSUER}/oauth/authorize`,
        token_endpoint: `${ISSUER}/oauth/token`,
        revocation_endpoint: `${ISSUER}/oauth/revoke`,
        ...(issParameter ? { authorization_response_iss_parameter_supported: true } : {}),
      });
    }
    if (url.pathname === "/oauth/token") {
      if (body.grant_type === "authorization_code") return issue();
      if (body.grant_type === "refresh_token" && body.refresh_token === refresh) return issue();
      return json(400, { error: "invalid_grant", error_description: "refresh token replayed" });
    }
    if (url.pathname === "/oauth/revoke") {
      live = new Set();
      return new Response(null, { status: 200 });
    }
    const token = (headers.get("authorization") || "").replace("Bearer ", "");
    if (!live.has(token)) return json(401, { error: { message: "invalid token", type: "invalid_request_error", code: "invalid_api_key" } });
    if (url.pathname === "/v1/keyfob/allowance") return json(200, { object: "keyfob.allowance", limits: [] });
    if (url.pathname === "/v1/keyfob/quote") return json(200, { object: "keyfob.quote", allowed: true, model: JSON.parse(body).model });
    if (url.pathname === "/v1/chat/completions") {
      return json(429, { error: { message: "allowance exhausted", type: "insufficient_quota", code: "allowance_exhausted" } }, {
        "x-should-retry": "false",
        "x-keyfob-allowance-resets-at": "2027-01-01T00:00:00Z",
      });
    }
    return json(404, { error: { message: "no such path" } });
  };
  return { fetch, calls, revokeAll: () => (live = new Set()) };
}

async function signedIn(options = {}) {
  const server = fakeKeyfob(options);
  const kf = new Keyfob({ issuer: ISSUER, clientId: "kfapp_x", redirectUri: CB, storage: "memory", fetch: server.fetch });
  const { url, state } = await kf.authorizationUrl();
  const back = new URL(CB);
  back.searchParams.set("code", "kfac_1");
  back.searchParams.set("state", state);
  back.searchParams.set("iss", ISSUER);
  const tokens = await kf.handleRedirect(back.toString());
  return { server, kf, url: new URL(url), tokens };
}

test("s256 is RFC 7636's S256 and verifiers are 43 url-safe characters", async () => {
  const verifier = randomString(32);
  assert.match(verifier, /^[A-Za-z0-9_-]{43}$/);
  const expected = createHash("sha256").update(verifier).digest("base64url");
  assert.equal(await s256(verifier), expected);
  assert.notEqual(randomString(), randomString());
});

test("the authorization URL asks for the code with PKCE S256, state, resource and suggestions", async () => {
  const server = fakeKeyfob();
  const kf = new Keyfob({ issuer: `${ISSUER}/`, clientId: "kfapp_x", redirectUri: CB, storage: "memory", fetch: server.fetch });
  const { url, state } = await kf.authorizationUrl({
    suggest: { capUsd: 2.5, window: "week", models: ["fake/m1", "fake/m2"], expiresInS: 86400 },
  });
  const u = new URL(url);
  assert.equal(u.origin + u.pathname, `${ISSUER}/oauth/authorize`);
  const p = Object.fromEntries(u.searchParams);
  assert.equal(p.response_type, "code");
  assert.equal(p.client_id, "kfapp_x");
  assert.equal(p.redirect_uri, CB);
  assert.equal(p.code_challenge_method, "S256");
  assert.match(p.code_challenge, /^[A-Za-z0-9_-]{43}$/);
  assert.equal(p.state, state);
  assert.equal(p.resource, `${ISSUER}/v1`);
  assert.equal(p.keyfob_cap_usd, "2.5");
  assert.equal(p.keyfob_window, "week");
  assert.equal(p.keyfob_models, "fake/m1 fake/m2");
  assert.equal(p.keyfob_expires_in, "86400");
});

test("handleRedirect exchanges the code with the verifier of that state, once", async () => {
  const { server, kf, url, tokens } = await signedIn();
  assert.equal(tokens.accessToken, "kfat_1");
  assert.equal(tokens.refreshToken, "kfrt_1");
  const exchange = server.calls.find((c) => c.path === "/oauth/token");
  assert.equal(exchange.body.grant_type, "authorization_code");
  assert.equal(exchange.body.client_id, "kfapp_x");
  assert.equal(exchange.body.redirect_uri, CB);
  assert.equal(await s256(exchange.body.code_verifier), url.searchParams.get("code_challenge"));
  // the same answer again (a reload, a replayed URL): the state is used up
  const replay = new URL(CB);
  replay.searchParams.set("code", "kfac_1");
  replay.searchParams.set("state", url.searchParams.get("state"));
  await assert.rejects(kf.handleRedirect(replay.toString()), (e) => e.code === "invalid_state");
  assert.equal(await kf.handleRedirect(CB), null); // not an OAuth answer at all
});

test("handleRedirect refuses a forged state and another issuer (mix-up)", async () => {
  const server = fakeKeyfob();
  const kf = new Keyfob({ issuer: ISSUER, clientId: "kfapp_x", redirectUri: CB, storage: "memory", fetch: server.fetch });
  const forged = new URL(CB);
  forged.searchParams.set("code", "kfac_evil");
  forged.searchParams.set("state", "made-up");
  await assert.rejects(kf.handleRedirect(forged.toString()), KeyfobError);
  const { state } = await kf.authorizationUrl();
  const mixed = new URL(CB);
  mixed.searchParams.set("code", "kfac_1");
  mixed.searchParams.set("state", state);
  mixed.searchParams.set("iss", "https://evil.example");
  await assert.rejects(kf.handleRedirect(mixed.toString()), (e) => e.code === "issuer_mismatch");
  assert.equal(server.calls.filter((c) => c.path === "/oauth/token").length, 0);
});

test("a server that sends iss must send it (RFC 9207)", async () => {
  const server = fakeKeyfob({ issParameter: true });
  const kf = new Keyfob({ issuer: ISSUER, clientId: "kfapp_x", redirectUri: CB, storage: "memory", fetch: server.fetch });
  const { state } = await kf.authorizationUrl();
  await assert.rejects(kf.handleRedirect(`${CB}?code=kfac_1&state=${state}`), (e) => e.code === "issuer_mismatch");
  const again = await kf.authorizationUrl();
  const ok = await kf.handleRedirect(`${CB}?code=kfac_1&state=${again.state}&iss=${encodeURIComponent(ISSUER)}`);
  assert.equal(ok.accessToken, "kfat_1");
});

test("a denied consent becomes a KeyfobError with the OAuth code", async () => {
  const server = fakeKeyfob();
  const kf = new Keyfob({ issuer: ISSUER, clientId: "kfapp_x", redirectUri: CB, storage: "memory", fetch: server.fetch });
  const { state } = await kf.authorizationUrl();
  const denied = new URL(CB);
  denied.searchParams.set("error", "access_denied");
  denied.searchParams.set("state", state);
  await assert.rejects(kf.handleRedirect(denied.toString()), (e) => e.code === "access_denied");
});

test("the fetch wrapper sends the bearer, replaces an SDK's placeholder key, and refreshes once on 401", async () => {
  const { server, kf } = await signedIn();
  const ok = await kf.fetch(`${ISSUER}/v1/keyfob/allowance`, { headers: { authorization: "Bearer keyfob", "x-api-key": "keyfob" } });
  assert.equal(ok.status, 200);
  const sent = server.calls.at(-1).headers;
  assert.equal(sent.get("authorization"), "Bearer kfat_1");
  assert.equal(sent.get("x-api-key"), null);
  server.revokeAll(); // the access token dies (revoked, expired early)
  const again = await kf.fetch(`${ISSUER}/v1/keyfob/allowance`);
  assert.equal(again.status, 200);
  assert.equal((await kf.tokens()).accessToken, "kfat_2");
});

test("tokens close to expiry are refreshed before the call; concurrent callers share one refresh", async () => {
  const { server, kf } = await signedIn({ accessLifetimeS: 30 }); // inside the 60 s margin
  const tokens = await Promise.all([kf.accessToken(), kf.accessToken(), kf.accessToken()]);
  assert.deepEqual(new Set(tokens).size, 1);
  const refreshes = server.calls.filter((c) => c.body && c.body.grant_type === "refresh_token");
  assert.equal(refreshes.length, 1); // a rotated refresh token replayed would revoke the family
});

test("a refused refresh signs the app out", async () => {
  const { kf } = await signedIn({ accessLifetimeS: 1 });
  const stored = await kf.tokens();
  await kf.storage.set(kf._key, JSON.stringify({ ...stored, refreshToken: "kfrt_stolen" }));
  await assert.rejects(kf.accessToken(), (e) => e.code === "invalid_grant");
  assert.equal(await kf.isSignedIn(), false);
});

test("quote and allowance call Keyfob's own API", async () => {
  const { kf } = await signedIn();
  assert.equal((await kf.allowance()).object, "keyfob.allowance");
  const q = await kf.quote({ model: "fake/m1", messages: [{ role: "user", content: "hi" }] });
  assert.equal(q.model, "fake/m1");
});

test("an exhausted allowance is a KeyfobError that says not to retry", async () => {
  const { kf } = await signedIn();
  const r = await kf.fetch(`${ISSUER}/v1/chat/completions`, { method: "POST", body: "{}" });
  assert.equal(r.status, 429);
  await assert.rejects(kf._json("/v1/chat/completions", { method: "POST", body: "{}" }), (e) => {
    assert.equal(e.status, 429);
    assert.equal(e.code, "allowance_exhausted");
    assert.equal(e.shouldRetry, "false");
    assert.equal(e.resetsAt, "2027-01-01T00:00:00Z");
    return true;
  });
});

test("SDK options point the official clients at the gateway through the wrapper", async () => {
  const { kf } = await signedIn();
  const o = kf.openaiOptions({ maxRetries: 1 });
  assert.equal(o.baseURL, `${ISSUER}/v1`);
  assert.equal(o.dangerouslyAllowBrowser, true);
  assert.equal(o.fetch, kf.fetch);
  assert.equal(o.maxRetries, 1);
  const a = kf.anthropicOptions();
  assert.equal(a.baseURL, ISSUER); // the Anthropic SDK adds /v1/messages itself
  assert.equal(a.fetch, kf.fetch);
});

test("sign out revokes the refresh token (its family) and forgets the tokens", async () => {
  const { server, kf } = await signedIn();
  await kf.signOut();
  const revoke = server.calls.find((c) => c.path === "/oauth/revoke");
  assert.equal(revoke.body.token, "kfrt_1");
  assert.equal(revoke.body.token_type_hint, "refresh_token");
  assert.equal(revoke.body.client_id, "kfapp_x");
  assert.equal(await kf.isSignedIn(), false);
  await assert.rejects(kf.accessToken(), (e) => e.code === "not_signed_in");
});

test("storage choices", async () => {
  const m = storageFor("memory");
  m.set("k", "v");
  assert.equal(m.get("k"), "v");
  m.remove("k");
  assert.equal(m.get("k"), null);
  assert.throws(() => storageFor("local"), TypeError); // no localStorage in Node
  const custom = memoryStorage();
  assert.equal(storageFor(custom), custom);
  // an async store works too
  const map = new Map();
  const asyncStore = { get: async (k) => map.get(k) ?? null, set: async (k, v) => void map.set(k, v), remove: async (k) => void map.delete(k) };
  const server = fakeKeyfob();
  const kf = new Keyfob({ issuer: ISSUER, clientId: "c", redirectUri: CB, storage: asyncStore, fetch: server.fetch });
  const { state } = await kf.authorizationUrl();
  await kf.handleRedirect(`${CB}?code=kfac_1&state=${state}`);
  assert.equal(await kf.accessToken(), "kfat_1");
});

test("costOf reads Keyfob's headers", () => {
  const r = new Response("{}", {
    headers: { "x-keyfob-cost-usd": "0.000120", "x-keyfob-allowance-left-usd": "4.99", "x-keyfob-request-id": "r1" },
  });
  const c = costOf(r);
  assert.equal(c.costUsd, "0.000120");
  assert.equal(c.allowanceLeftUsd, "4.99");
  assert.equal(c.requestId, "r1");
  assert.equal(c.resetsAt, null);
});

test("onCost reports a whole answer's cost from its headers and a stream's from its end", async () => {
  const encoder = new TextEncoder();
  const events = [
    'data: {"choices":[{"delta":{"content":"Hi"}}]}\n\n',
    'data: {"choices":[],"usage":{"total_tokens":3}}\n\n: keyfob-co',
    "st-usd=0.000042\ndata: [DONE]\n\n",
  ];
  const upstream = async (input) => {
    if (String(input).endsWith("/oauth/token")) {
      return new Response(JSON.stringify({ access_token: "kfat_1", refresh_token: "kfrt_1", expires_in: 3600 }), {
        headers: { "content-type": "application/json" },
      });
    }
    if (String(input).endsWith("/stream")) {
      const body = new ReadableStream({
        start(controller) {
          for (const e of events) controller.enqueue(encoder.encode(e));
          controller.close();
        },
      });
      return new Response(body, { headers: { "content-type": "text/event-stream", "x-keyfob-reserved-usd": "0.01" } });
    }
    if (String(input).includes("well-known")) {
      return new Response(JSON.stringify({ authorization_endpoint: `${ISSUER}/a`, token_endpoint: `${ISSUER}/oauth/token` }));
    }
    return new Response("{}", { headers: { "x-keyfob-cost-usd": "0.000007", "x-keyfob-allowance-left-usd": "1.5" } });
  };
  const kf = new Keyfob({ issuer: ISSUER, clientId: "c", redirectUri: CB, storage: "memory", fetch: upstream });
  const { state } = await kf.authorizationUrl();
  await kf.handleRedirect(`${CB}?code=kfac_1&state=${state}`);
  const seen = [];
  const off = kf.onCost((c) => seen.push(c));
  await (await kf.fetch(`${ISSUER}/v1/whole`)).text();
  const text = await (await kf.fetch(`${ISSUER}/v1/stream`)).text();
  assert.equal(text, events.join("")); // bytes pass through untouched
  assert.deepEqual(
    seen.map((c) => [c.costUsd, c.allowanceLeftUsd, c.streamed]),
    [
      ["0.000007", "1.5", false],
      ["0.000042", null, true],
    ],
  );
  off();
  await (await kf.fetch(`${ISSUER}/v1/whole`)).text();
  assert.equal(seen.length, 2);
});
