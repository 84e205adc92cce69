// node --test: the official @anthropic-ai/sdk (a pinned dev dependency; never a runtime
// one) calling messages.create through anthropicOptions(), against a tiny local HTTP
// server that answers like Keyfob: discovery, the token endpoint, /v1/messages whole and
// streamed (with Keyfob's cost headers and the stream's cost comment), and an exhausted
// allowance (429, x-should-retry: false). It proves the SDK and the helper agree on the
// base URL, the key the wrapper swaps in, and the headers the cost is read from.
import assert from "node:assert/strict";
import { createServer } from "node:http";
import { after, before, test } from "node:test";

import { Keyfob } from "../src/keyfob.js";

let Anthropic = null;
try {
  ({ default: Anthropic } = await import("@anthropic-ai/sdk"));
} catch {
  // not installed: `npm ci` in clients/js (scripts/browser.sh and the Python suite run it)
}
const skip = Anthropic ? false : "@anthropic-ai/sdk is not installed (npm ci in clients/js)";

const CB = "http://127.0.0.1:5173/callback";
const seen = [];
let server;
let issuer;

function message(model, text) {
  return {
    id: "msg_kf_1",
    type: "message",
    role: "assistant",
    model,
    content: [{ type: "text", text }],
    stop_reason: "end_turn",
    stop_sequence: null,
    usage: { input_tokens: 9, output_tokens: 3 },
  };
}

function streamEvents(model) {
  const events = [
    ["message_start", { type: "message_start", message: { ...message(model, ""), content: [], stop_reason: null, usage: { input_tokens: 9, output_tokens: 1 } } }],
    ["content_block_start", { type: "content_block_start", index: 0, content_block: { type: "text", text: "" } }],
    ["content_block_delta", { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "Hello " } }],
    ["content_block_delta", { type: "content_block_delta", index: 0, delta: { type: "text_delta", text: "there" } }],
    ["content_block_stop", { type: "content_block_stop", index: 0 }],
    ["message_delta", { type: "message_delta", delta: { stop_reason: "end_turn", stop_sequence: null }, usage: { output_tokens: 3 } }],
  ];
  const body = events.map(([name, data]) => `event: ${name}\ndata: ${JSON.stringify(data)}\n\n`);
  // Keyfob's cost comment comes just before the terminal event (SDKs skip comments)
  body.push(": keyfob-cost-usd=0.000054\n\n");
  body.push(`event: message_stop\ndata: ${JSON.stringify({ type: "message_stop" })}\n\n`);
  return body.join("");
}

function answer(res, status, body, headers = {}) {
  res.writeHead(status, { "content-type": "application/json", ...headers });
  res.end(JSON.stringify(body));
}

async function handle(req, res) {
  const chunks = [];
  for await (const c of req) chunks.push(c);
  const raw = Buffer.concat(chunks).toString();
  seen.push({ method: req.method, path: req.url, headers: req.headers, body: raw });
  if (req.url === "/.well-known/oauth-authorization-server") {
    return answer(res, 200, {
      issuer,
      authorization_endpoint: `${issuer}/oauth/authorize`,
      token_endpoint: `${issuer}/oauth/token`,
      revocation_endpoint: `${issuer}/oauth/revoke`,
    });
  }
  if (req.url === "/oauth/token") {
    return answer(res, 200, { access_token: "kfat_sdk", refresh_token: "kfrt_sdk", token_type: "Bearer", expires_in: 3600 });
  }
  if (req.url !== "/v1/messages" || req.method !== "POST") {
    return answer(res, 404, { type: "error", error: { type: "not_found_error", message: "no such path" } });
  }
  if (req.headers.authorization !== "Bearer kfat_sdk") {
    return answer(res, 401, { type: "error", error: { type: "authentication_error", message: "invalid token" } });
  }
  const body = JSON.parse(raw);
  if (body.max_tokens > 1000) {
    return answer(
      res,
      429,
      { type: "error", error: { type: "rate_limit_error", message: "allowance exhausted: limit \u201cmonth\u201d had $0.00 left" } },
      { "x-should-retry": "false", "x-keyfob-allowance-resets-at": "2027-01-01T00:00:00Z", "x-keyfob-request-id": "kf-429" },
    );
  }
  const headers = { "x-keyfob-request-id": "kf-req-1", "request-id": "req_1" };
  if (body.stream) {
    res.writeHead(200, { "content-type": "text/event-stream", "x-keyfob-reserved-usd": "0.002000", ...headers });
    return res.end(streamEvents(body.model));
  }
  return answer(res, 200, message(body.model, "Hello there"), {
    ...headers,
    "x-keyfob-cost-usd": "0.000054",
    "x-keyfob-reserved-usd": "0.002000",
    "x-keyfob-allowance-left-usd": "4.999946",
  });
}

before(async () => {
  server = createServer((req, res) => {
    handle(req, res).catch((e) => {
      res.writeHead(500);
      res.end(String(e));
    });
  });
  await new Promise((ok) => server.listen(0, "127.0.0.1", ok));
  issuer = `http://127.0.0.1:${server.address().port}`;
});

after(() => new Promise((ok) => server.close(ok)));

async function signedIn() {
  const kf = new Keyfob({ issuer, clientId: "kfapp_sdk", redirectUri: CB, storage: "memory" });
  const { state } = await kf.authorizationUrl();
  await kf.handleRedirect(`${CB}?code=kfac_1&state=${state}&iss=${encodeURIComponent(issuer)}`);
  return kf;
}

test("messages.create through anthropicOptions reaches /v1/messages with the access token", { skip }, async () => {
  const kf = await signedIn();
  const costs = [];
  kf.onCost((c) => costs.push(c));
  const client = new Anthropic(kf.anthropicOptions({ maxRetries: 0 }));
  const { data: reply, response } = await client.messages
    .create({ model: "anthropic/claude-haiku-4-5", max_tokens: 64, messages: [{ role: "user", content: "hi" }] })
    .withResponse();
  assert.equal(reply.content[0].text, "Hello there");
  assert.equal(reply.usage.output_tokens, 3);
  assert.equal(response.headers.get("x-keyfob-cost-usd"), "0.000054");
  const call = seen.findLast((s) => s.path === "/v1/messages");
  assert.equal(call.headers.authorization, "Bearer kfat_sdk");
  assert.equal(call.headers["x-api-key"], undefined, "the SDK's placeholder key is never sent");
  assert.ok(call.headers["anthropic-version"], "the SDK's own headers pass through");
  assert.equal(JSON.parse(call.body).model, "anthropic/claude-haiku-4-5");
  assert.deepEqual(
    costs.map((c) => [c.costUsd, c.allowanceLeftUsd, c.requestId, c.streamed]),
    [["0.000054", "4.999946", "kf-req-1", false]],
  );
});

test("a streamed message arrives whole and its cost is read from the stream's end", { skip }, async () => {
  const kf = await signedIn();
  const costs = [];
  kf.onCost((c) => costs.push(c));
  const client = new Anthropic(kf.anthropicOptions({ maxRetries: 0 }));
  const stream = client.messages.stream({
    model: "anthropic/claude-haiku-4-5",
    max_tokens: 64,
    messages: [{ role: "user", content: "hi" }],
  });
  const text = [];
  stream.on("text", (t) => text.push(t));
  const final = await stream.finalMessage();
  assert.equal(text.join(""), "Hello there");
  assert.equal(final.stop_reason, "end_turn");
  assert.deepEqual(
    costs.map((c) => [c.costUsd, c.reservedUsd, c.streamed]),
    [["0.000054", "0.002000", true]],
  );
});

test("an exhausted allowance fails at once with the SDK's default retries", { skip }, async () => {
  const kf = await signedIn();
  const client = new Anthropic(kf.anthropicOptions()); // default maxRetries (2)
  const before = seen.filter((s) => s.path === "/v1/messages").length;
  const started = Date.now();
  await assert.rejects(
    client.messages.create({ model: "anthropic/claude-haiku-4-5", max_tokens: 4096, messages: [{ role: "user", content: "hi" }] }),
    (e) => {
      assert.ok(e instanceof Anthropic.RateLimitError, String(e));
      assert.equal(e.status, 429);
      assert.equal(e.headers.get("x-keyfob-allowance-resets-at"), "2027-01-01T00:00:00Z");
      return true;
    },
  );
  assert.equal(seen.filter((s) => s.path === "/v1/messages").length - before, 1, "x-should-retry: false is obeyed");
  assert.ok(Date.now() - started < 2000);
});
