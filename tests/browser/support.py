"""What the browser tests drive: a real lab in a subprocess, and Chromium.

The lab is `vsml-lab up` (or `api`) on a free loopback port, with its
database, queue and artefacts in a temporary folder; Chromium is Debian's, run
headless with a fresh profile and no background network traffic.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from server.config import Settings
from tests.services import free_port

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
STARTUP_S = 60.0  # migrations, presets, uvicorn and the Celery worker
STOP_S = 20.0
TOKEN = "browser-test-token"

requires_chromium = pytest.mark.skipif(
    not CHROMIUM.exists(),
    reason="browser tests need Debian's chromium at /usr/bin/chromium "
    "(apt-get install chromium chromium-driver)",
)


@dataclass
class Lab:
    """A running lab: its address and a small JSON client for setting up."""

    url: str
    log: Path

    @property
    def database_url(self) -> str:
        """The lab's SQLite database (beside its log, as `running_lab` sets up)."""
        return f"sqlite:///{self.log.parent / 'lab.db'}"

    def call(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(
            self.url + path, data=data, method=method,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as response:
            text = response.read()
        return json.loads(text) if text else None


def lab_command(port: int, command: str) -> list[str]:
    launcher = Path(sys.executable).with_name("vsml-lab")
    args = ["--port", str(port), command]
    if launcher.exists():
        return [str(launcher), *args]
    return [sys.executable, "-m", "server.cli", *args]


def wait_healthy(url: str, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            pytest.fail(f"vsml-lab exited early:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(url + "/health", timeout=2):
                return
        except urllib.error.HTTPError:
            return  # it answers; the API alone has no queue folder yet (503)
        except (urllib.error.URLError, ConnectionError):
            time.sleep(0.3)
    pytest.fail(f"the lab did not answer /health in {STARTUP_S} s:\n{log.read_text()}")


def stop(process: subprocess.Popen[bytes]) -> None:
    """Ctrl-C the launcher, which stops its worker; kill its group if it hangs."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGINT)
    try:
        process.wait(STOP_S)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


@contextmanager
def running_lab(data: Path, command: str, token: str = "") -> Iterator[Lab]:
    """`vsml-lab COMMAND` on a free port with everything under `data`."""
    port = free_port()
    # Only our settings: none of the caller's database, broker or token.
    service = {f"VSML_{name.upper()}" for name in Settings.model_fields}
    env = {k: v for k, v in os.environ.items() if k not in service}
    env["VSML_ARTIFACT_DIR"] = str(data / "artifacts")
    if token:
        env["VSML_API_TOKEN"] = token
    log = data / "lab.log"
    with log.open("wb") as out:
        # cwd=data: whatever the lab writes beside itself stays in the temp dir.
        process = subprocess.Popen(
            lab_command(port, command), cwd=data, env=env, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, process, log)
        yield Lab(url, log)
    finally:
        stop(process)


def headless_chromium(profile: Path) -> Any:
    """Selenium on Debian's chromium and chromedriver (no driver download)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in (
        "--headless=new", "--no-sandbox", "--disable-gpu",
        "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-dev-shm-usage",
        f"--user-data-dir={profile}", "--window-size=1400,1000",
    ):  # fmt: skip
        options.add_argument(flag)
    # Console errors (a failed script, a CSP violation) fail the tests.
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    return webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
