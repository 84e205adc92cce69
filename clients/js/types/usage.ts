// How an app uses the client, type-checked against src/keyfob.d.ts (`tsc --noEmit`, run by
// the suite). Imported by the package's own name, so the "exports" map is checked too.
// Lines marked @ts-expect-error are misuses the types must refuse: tsc fails if they pass.
import Anthropic from "@anthropic-ai/sdk";

import {
  type Allowance,
  type CallCost,
  type Quote,
  type Tokens,
  Keyfob,
  KeyfobError,
  costOf,
  memoryStorage,
  storageFor,
} from "@keyfob/client";

const kf = new Keyfob({
  issuer: "http://127.0.0.1:8787",
  clientId: "kfapp_example",
  redirectUri: "http://127.0.0.1:5173/callback",
  storage: "session",
});
new Keyfob({ issuer: "x", clientId: "c", redirectUri: "r", storage: memoryStorage(), resource: null });
// @ts-expect-error: a storage choice is one of the named ones or a TokenStore
new Keyfob({ issuer: "x", clientId: "c", redirectUri: "r", storage: "cookie" });
// @ts-expect-error: clientId and redirectUri are required
new Keyfob({ issuer: "x" });

export async function signIn(): Promise<Tokens> {
  const back = await kf.handleRedirect();
  if (back !== null) return back;
  return kf.signIn({ mode: "popup", suggest: { capUsd: "2.50", window: "week", models: ["openai/gpt-4o-mini"], expiresInS: 86400 } });
}

// @ts-expect-error: the window is day, week or month
kf.authorizationUrl({ suggest: { window: "year" } });

export async function spend(): Promise<string> {
  const allowance: Allowance = await kf.allowance();
  const left: string = allowance.limits[0]?.left_usd ?? "0";
  const quote: Quote = await kf.quote({ model: "openai/gpt-4o-mini", messages: [] });
  const ok: boolean = quote.allowed && quote.worst_case.output_tokens > 0;
  const off: () => void = kf.onCost((c: CallCost) => console.log(c.costUsd, c.streamed));
  off();
  const answer = await kf.fetch(`${kf.baseURL}/models`);
  const cost = costOf(answer);
  // @ts-expect-error: a cost is a decimal string (exact USD), never a number
  const asNumber: number = cost.costUsd;
  void asNumber;
  return ok ? left : "0";
}

export async function withTheAnthropicSdk(): Promise<string> {
  const client = new Anthropic(kf.anthropicOptions({ maxRetries: 1 }));
  try {
    const message = await client.messages.create({
      model: "anthropic/claude-haiku-4-5",
      max_tokens: 256,
      messages: [{ role: "user", content: "hello" }],
    });
    const first = message.content[0];
    return first?.type === "text" ? first.text : "";
  } catch (e) {
    if (e instanceof KeyfobError && e.shouldRetry === "false") return `resets at ${e.resetsAt ?? "?"}`;
    throw e;
  }
}

const store = storageFor("local");
const saved: string | null | Promise<string | null> = store.get("k");
void saved;
