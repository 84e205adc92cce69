"""Run TensorZero's HTTP gateway from its PyPI wheel: ``python bench/tensorzero_gateway.py
CONFIG PORTFILE`` (with the interpreter of ``bench/.venv-tensorzero``).

Why this launcher: TensorZero ships its gateway as a container image or a Rust build; the
wheel carries the same gateway (``tensorzero._start_http_gateway``, what its
``patch_openai_client`` starts), serving HTTP on its own threads on 127.0.0.1 at a port it
picks. This script starts it with no ClickHouse, PostgreSQL or Valkey, writes its base URL
to PORTFILE, and then only waits for SIGTERM, so the process's CPU is the gateway's.
Standard library and ``tensorzero`` only: it runs in that venv, not the project's.
"""

from __future__ import annotations

import os
import signal
import sys
import threading


def main() -> int:
    import tensorzero  # type: ignore[import-not-found]  # its own venv

    config, portfile = sys.argv[1], sys.argv[2]
    # the wheel's own launcher (what patch_openai_client starts)
    gateway = tensorzero._start_http_gateway(
        config_file=config,
        clickhouse_url=None,
        postgres_url=None,
        valkey_url=None,
        async_setup=False,
    )
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with open(portfile + ".tmp", "w") as f:
        f.write(gateway.base_url)
    os.replace(portfile + ".tmp", portfile)
    stop.wait()
    gateway.close()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
