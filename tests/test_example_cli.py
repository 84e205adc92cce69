"""The CLI summariser example (examples/cli-summariser) run as a person would: the first
run shows a device code, the person approves it on Keyfob, the summary and its cost are
printed; the second run uses the cached tokens; a file bigger than the allowance is
refused from the quote before any call."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import httpx

from tests.oauth_app import Browser
from tests.support import FakeLLM, KeyfobServer, cli, ledger_rows

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "examples" / "cli-summariser" / "summarise.py"


def run(server: KeyfobServer, client_id: str, config: Path, file: Path) -> subprocess.Popen[str]:
    env = {
        **os.environ,
        "XDG_CONFIG_HOME": str(config),  # the token cache's directory (platformdirs)
        "PYTHONPATH": os.pathsep.join(
            [str(ROOT / "clients" / "python" / "src"), os.environ.get("PYTHONPATH", "")]
        ),
    }
    return subprocess.Popen(
        [sys.executable, str(SCRIPT), "--keyfob", server.url, "--client-id", client_id, str(file)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_cli_summariser_on_the_device_flow(
    server: KeyfobServer, fakellm: FakeLLM, tmp_path: Path
) -> None:
    cli(
        server.data_dir,
        "providers",
        "add",
        "fake",
        "--base-url",
        fakellm.base_url,
        "-m",
        "gpt-4o-mini",
        KEYFOB_PROVIDER_KEY="sk-test-upstream",
    )
    added = cli(
        server.data_dir, "apps", "add", "Summariser", "--redirect-uri", "http://127.0.0.1/cb"
    )
    client_id = re.search(r"client_id: (\S+)", added.stdout).group(1)  # type: ignore[union-attr]
    notes = tmp_path / "notes.txt"
    notes.write_text("hello: Keyfob lets people bring their own AI account to apps.")
    config = tmp_path / "config"

    first = run(server, client_id, config, notes)
    assert first.stdout is not None
    prompt = first.stdout.readline() + first.stdout.readline()
    code = re.search(r"enter the code (\S+)", prompt)
    assert code, prompt
    with httpx.Client(base_url=server.url, timeout=30) as http:
        browser = Browser(http, "")
        assert browser.login().status_code == 303
        page = browser.enter_device_code(code.group(1))
        assert "Summariser" in page.text
        approved = browser.decide(page, post_to="/device/consent", cap_usd="0.01")
        assert approved.status_code == 200
    out, err = first.communicate(timeout=60)
    assert first.returncode == 0, err
    assert "Hi there" in out  # fakellm's answer to a text with "hello"
    assert re.search(r"cost \$0\.\d+, \$0\.\d+ left", err), err
    cache = next(config.rglob("tokens.json"))
    assert oct(cache.stat().st_mode & 0o777) == "0o600"

    second = run(server, client_id, config, notes)
    out2, err2 = second.communicate(timeout=60)
    assert second.returncode == 0, err2
    assert "enter the code" not in out2 and "Hi there" in out2  # cached tokens, no new code

    # a file whose worst case exceeds what is left: refused by the quote, nothing sent
    calls_before = fakellm.request_count()
    rows_before = len(ledger_rows(server.data_dir))
    big = tmp_path / "big.txt"
    big.write_text("word " * 40_000)
    third = run(server, client_id, config, big)
    _out3, err3 = third.communicate(timeout=60)
    assert third.returncode == 2, err3
    assert "Not enough allowance left" in err3
    assert fakellm.request_count() == calls_before
    assert len(ledger_rows(server.data_dir)) == rows_before
