// The example chat app: sign in with Keyfob (PKCE, redirect mode), then call the
// gateway with the official openai SDK. Keyfob's client gives the SDK its base URL and a
// fetch that adds (and refreshes) the token, and reports each call's cost.
import OpenAI from "openai";
import { Keyfob, KeyfobError } from "@keyfob/client";

const $ = (id) => document.getElementById(id);
const config = await (await fetch("/config.json")).json();
const kf = new Keyfob({
  issuer: config.issuer,
  clientId: config.clientId,
  redirectUri: config.redirectUri,
  storage: "session",
});
const openai = new OpenAI(kf.openaiOptions({ maxRetries: 1 }));
const history = [];

function status(text, state) {
  $("status").textContent = text;
  $("status").dataset.state = state;
}

function explain(error) {
  // What an app must handle (docs/APPS.md): an exhausted allowance (no retry helps),
  // a revoked or expired grant (sign in again), a rate limit (wait and retry).
  const status = error.status;
  const headers = error.headers;
  const get = (name) => (headers && typeof headers.get === "function" ? headers.get(name) : null);
  if (status === 429 && get("x-should-retry") === "false") {
    const reset = get("x-keyfob-allowance-resets-at");
    return `Your allowance for this app is used up${reset ? ` until ${reset}` : ""}. You can raise it in Keyfob.`;
  }
  if (status === 429) return "Too many requests right now; try again in a moment.";
  if (status === 401 || (error instanceof KeyfobError && error.code === "not_signed_in")) {
    return "This app's access was revoked or has expired: sign in again.";
  }
  return error.message || String(error);
}

kf.onCost((cost) => {
  $("cost").textContent = `This answer cost $${cost.costUsd}`;
  $("cost").dataset.usd = cost.costUsd;
});

async function showAllowance() {
  const allowance = await kf.allowance();
  const tightest = allowance.limits.reduce(
    (min, l) => (min === null || Number(l.left_usd) < Number(min.left_usd) ? l : min),
    null,
  );
  $("left").textContent = tightest
    ? `Allowance left: $${tightest.left_usd} (${tightest.limit}${tightest.resets_at ? `, resets ${tightest.resets_at}` : ""})`
    : "No spending limit";
  $("left").dataset.usd = tightest ? tightest.left_usd : "";
}

async function showChat() {
  $("signed-out").hidden = true;
  $("chat").hidden = false;
  const models = [];
  for await (const model of openai.models.list()) models.push(model.id);
  $("model").replaceChildren(...models.map((id) => new Option(id, id)));
  await showAllowance();
  status("Signed in", "signed-in");
}

function showSignedOut() {
  $("chat").hidden = true;
  $("signed-out").hidden = false;
  status("Not signed in", "signed-out");
}

async function send(event) {
  event.preventDefault();
  $("error").textContent = "";
  $("answer").textContent = "";
  $("cost").textContent = "";
  $("send").disabled = true;
  status("Thinking…", "busy");
  history.push({ role: "user", content: $("prompt").value });
  const request = { model: $("model").value, messages: history };
  try {
    let text = "";
    if ($("stream").checked) {
      const stream = await openai.chat.completions.create({ ...request, stream: true });
      for await (const chunk of stream) {
        text += chunk.choices[0]?.delta?.content ?? "";
        $("answer").textContent = text;
      }
    } else {
      const completion = await openai.chat.completions.create(request);
      text = completion.choices[0].message.content ?? "";
      $("answer").textContent = text;
    }
    history.push({ role: "assistant", content: text });
    await showAllowance();
    status("Answered", "answered");
  } catch (error) {
    history.pop();
    $("error").textContent = explain(error);
    status("Failed", "failed");
    if (error.status === 401) await kf.forget();
  } finally {
    $("send").disabled = false;
  }
}

// "?mode=popup" signs in in a popup window and keeps this page (and what it holds).
const mode = new URLSearchParams(location.search).get("mode") === "popup" ? "popup" : "redirect";
$("sign-in").addEventListener("click", async () => {
  try {
    await kf.signIn({ mode, suggest: { capUsd: config.suggestCapUsd ?? "1", window: "month" } });
    await showChat(); // popup mode resolves here; redirect mode has left the page
  } catch (error) {
    $("error").textContent = explain(error);
    status("Failed", "failed");
  }
});
$("sign-out").addEventListener("click", async () => {
  await kf.signOut();
  showSignedOut();
});
$("ask").addEventListener("submit", send);

try {
  await kf.handleRedirect();
  if (await kf.isSignedIn()) await showChat();
  else showSignedOut();
} catch (error) {
  showSignedOut();
  $("error").textContent = explain(error);
  status("Failed", "failed");
}
