"""Summarise a text file with the reader's own AI account, through Keyfob.

    python examples/cli-summariser/summarise.py --keyfob http://127.0.0.1:8787 \\
        --client-id kfapp_... notes.txt

The first run signs in with the device flow (it prints a code to type on Keyfob's
/device page) and caches the tokens in the user's config directory; later runs reuse and
refresh them. Before calling the model it asks Keyfob for a quote, so a file too big for
what is left of the allowance is refused here, with the reason, instead of failing
half-way. Register the app once: ``keyfob apps add "Summariser" --redirect-uri
http://127.0.0.1/cb`` (a device-flow app never uses its redirect URI).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from keyfob_client import Keyfob, KeyfobError

PROMPT = "Summarise the following text in at most five short bullet points.\n\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("file", type=Path)
    ap.add_argument("--keyfob", default="http://127.0.0.1:8787")
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--model", help="a model this app may use (default: the first granted)")
    ap.add_argument("--max-tokens", type=int, default=300)
    args = ap.parse_args(argv)

    text = args.file.read_text("utf-8", errors="replace")
    with Keyfob(args.keyfob, args.client_id) as kf:
        try:
            kf.sign_in(suggest={"cap_usd": "1", "window": "month"})
            client = kf.openai(max_retries=2)
            model = args.model or client.models.list().data[0].id
            body = {
                "model": model,
                "max_tokens": args.max_tokens,
                "messages": [{"role": "user", "content": PROMPT + text}],
            }
            quote = kf.quote(body)
            if not quote["allowed"]:
                print(
                    f"Not enough allowance left for this file (worst case "
                    f"${quote['worst_case']['cost_usd']}, refused by {quote['refused_by']}).",
                    file=sys.stderr,
                )
                return 2
            raw = client.chat.completions.with_raw_response.create(**body)
            answer = raw.parse()
        except KeyfobError as exc:
            if exc.code == "access_denied":
                print("You declined the sign-in.", file=sys.stderr)
            else:
                print(f"Keyfob: {exc}", file=sys.stderr)
            return 1
        except Exception as exc:  # the SDK's errors: 429 (allowance), 401 (revoked)...
            status = getattr(exc, "status_code", None)
            headers = getattr(getattr(exc, "response", None), "headers", {})
            if status == 429 and headers.get("x-should-retry") == "false":
                resets = headers.get("x-keyfob-allowance-resets-at", "its next reset")
                print(f"This app's allowance is used up until {resets}.", file=sys.stderr)
                return 2
            if status == 401:
                kf.cache.set(kf._key, None)
                print("Access was revoked: run again to sign in.", file=sys.stderr)
                return 1
            raise
        print(answer.choices[0].message.content)
        print(
            f"\n(cost ${raw.headers.get('x-keyfob-cost-usd')}, "
            f"${raw.headers.get('x-keyfob-allowance-left-usd')} left)",
            file=sys.stderr,
        )
        client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
