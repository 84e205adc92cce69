"""Serve the example chat app on a loopback port (standard library only).

    python examples/browser-chat/serve.py --port 5173 \\
        --keyfob http://127.0.0.1:8787 --client-id kfapp_...

Register the app first with this page as its redirect URI (its origin is then the one
Keyfob's CORS allows): ``keyfob apps add "Browser chat" --redirect-uri
http://127.0.0.1:5173/``. The page, the Keyfob JS client (clients/js) and the official
``openai`` SDK (``npm ci`` here, pinned by package-lock.json) all come from this origin.
"""

from __future__ import annotations

import argparse
import json
import mimetypes
from functools import partial
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import urlsplit

HERE = Path(__file__).resolve().parent
ROOTS = {
    "/vendor/openai/": HERE / "node_modules" / "openai",
    "/button/": HERE.parent / "button",
}
FILES = {
    "/": HERE / "index.html",
    "/index.html": HERE / "index.html",
    "/app.js": HERE / "app.js",
    "/style.css": HERE / "style.css",
    "/keyfob.js": HERE.parent.parent / "clients" / "js" / "src" / "keyfob.js",
}
TYPES = {".mjs": "text/javascript", ".js": "text/javascript", ".svg": "image/svg+xml"}


def resolve(path: str) -> Path | None:
    """The file for a URL path, never outside the roots above."""
    if path in FILES:
        return FILES[path]
    for prefix, root in ROOTS.items():
        if path.startswith(prefix):
            target = (root / path[len(prefix) :]).resolve()
            if target.is_file() and target.is_relative_to(root.resolve()):
                return target
    return None


class Handler(BaseHTTPRequestHandler):
    config: dict[str, str] = {}

    def do_GET(self) -> None:
        path = urlsplit(self.path).path
        if path == "/config.json":
            self._send(json.dumps(self.config).encode(), "application/json")
            return
        target = resolve(path)
        if target is None:
            self.send_error(HTTPStatus.NOT_FOUND)
            return
        kind = TYPES.get(target.suffix) or mimetypes.guess_type(target.name)[0]
        self._send(target.read_bytes(), kind or "application/octet-stream")

    def _send(self, body: bytes, content_type: str) -> None:
        self.send_response(HTTPStatus.OK)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:
        pass


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--port", type=int, default=5173)
    ap.add_argument("--keyfob", default="http://127.0.0.1:8787", help="Keyfob's URL")
    ap.add_argument("--client-id", required=True)
    ap.add_argument("--suggest-cap-usd", default="1")
    args = ap.parse_args(argv)
    if not (HERE / "node_modules" / "openai").is_dir():
        raise SystemExit("run `npm ci` in examples/browser-chat first (the openai SDK)")
    origin = f"http://127.0.0.1:{args.port}"
    config = {
        "issuer": args.keyfob.rstrip("/"),
        "clientId": args.client_id,
        "redirectUri": origin + "/",
        "suggestCapUsd": args.suggest_cap_usd,
    }
    handler = type("ConfiguredHandler", (Handler,), {"config": config})
    server = ThreadingHTTPServer(("127.0.0.1", args.port), partial(handler))
    print(f"serving on {origin}/", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
