"""The web console for tests: a real ``legato web`` process against a real stack, and headless Chromium
from the OS packages (``chromium`` + ``chromium-driver``) driven by Selenium."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from legato.config.settings import Settings
from legato.devstack.ports import free_port
from legato.security.keyring import Keyring
from legato.web.logins import add_token

CHROMIUM = os.environ.get("LEGATO_CHROMIUM", "/usr/bin/chromium")
CHROMEDRIVER = os.environ.get("LEGATO_CHROMEDRIVER", "/usr/bin/chromedriver")
ROOT = Path(__file__).resolve().parents[2]


@dataclass
class Console:
    """A running ``legato web``: its base URL and a login token per API role."""

    url: str
    tokens: dict[str, str]
    proc: subprocess.Popen[bytes]
    log: Path

    def login_url(self, role: str) -> str:
        return f"{self.url}/login?token={self.tokens[role]}"

    def logs(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""


@contextmanager
def running_console(
    settings: Settings, keyring: Keyring, tmp_path: Path, *, jaeger_url: str = ""
) -> Iterator[Console]:
    """``legato web`` as a child process acting as the keyring's viewer, operator and admin."""
    tokens_file = tmp_path / "web-tokens.json"
    tokens = {role: add_token(tokens_file, role) for role in ("viewer", "operator", "admin")}
    port = free_port()
    log = tmp_path / "web.log"
    env = {
        **os.environ,
        "LEGATO_NATS_URL": settings.nats_url,
        "LEGATO_NAMESPACE": settings.namespace,
        "LEGATO_NATS_CREDS": "",  # the console holds no identity of its own, only the users'
    }
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "legato.web",
                "--listen",
                f"127.0.0.1:{port}",
                "--keys",
                str(keyring.folder),
                "--tokens",
                str(tokens_file),
                *(["--jaeger-url", jaeger_url] if jaeger_url else []),
            ],
            env=env,
            cwd=tmp_path,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    console = Console(f"http://127.0.0.1:{port}", tokens, proc, log)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{console.url}/healthz", timeout=2) as res:
                    if res.status == 200:
                        break
            except (urllib.error.URLError, OSError):
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError("legato web did not come up:\n" + console.logs()) from None
                time.sleep(0.1)
        yield console
    except BaseException:
        sys.stderr.write("--- legato web ---\n" + console.logs())
        raise
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def chromium_missing() -> str | None:
    """Why headless Chromium cannot run here (None when it can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            return (
                f"{path} is missing: install the OS packages (apt-get install chromium chromium-driver; "
                "`make install` does it as root), or deselect these tests with -m 'not browser'"
            )
    return None


@contextmanager
def browser() -> Iterator[object]:
    """A fresh headless Chromium (its own profile folder) driven by chromedriver; never a download."""
    missing = chromium_missing()
    if missing:
        pytest.fail(missing)
    os.environ["SE_OFFLINE"] = "true"  # Selenium Manager must not try to fetch a browser or driver
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile = tempfile.mkdtemp(prefix="legato-chromium-")
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless=new",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--no-first-run",
        "--window-size=1400,900",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_page_load_timeout(30)
    try:
        yield driver
    finally:
        driver.quit()
        shutil.rmtree(profile, ignore_errors=True)


def screenshot(driver: object, name: str, tmp_path: Path) -> Path:
    """Save a PNG of the page: into LEGATO_SCREENSHOTS_DIR when set (docs/img for the README), else the
    test's temporary folder."""
    folder = Path(os.environ.get("LEGATO_SCREENSHOTS_DIR") or tmp_path)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.png"
    driver.save_screenshot(str(path))  # type: ignore[attr-defined]
    return path


def http(
    url: str, *, cookie: str | None = None, form: dict[str, str] | None = None, timeout: float = 15.0
) -> tuple[int, dict[str, list[str]], str]:
    """One request, redirects not followed: (status, headers by lower-case name, body)."""
    import http.client
    from urllib.parse import urlencode, urlsplit

    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname or "127.0.0.1", parts.port, timeout=timeout)
    headers = {"Cookie": cookie} if cookie else {}
    body = None
    if form is not None:
        body = urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request(
            "POST" if form is not None else "GET",
            parts.path + (f"?{parts.query}" if parts.query else ""),
            body,
            headers,
        )
        res = conn.getresponse()
        found: dict[str, list[str]] = {}
        for name, value in res.getheaders():
            found.setdefault(name.lower(), []).append(value)
        return res.status, found, res.read().decode(errors="replace")
    finally:
        conn.close()


def session_cookie(headers: dict[str, list[str]]) -> str:
    """The ``name=value`` of the session cookie a response set."""
    for value in headers.get("set-cookie", []):
        if value.startswith("legato_session="):
            return value.split(";", 1)[0]
    raise AssertionError(f"no session cookie in {headers.get('set-cookie')}")
