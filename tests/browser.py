"""A real headless Chromium for the operator-page tests: Debian's `chromium` driven by selenium
through Debian's `chromedriver` (the driver path is given, so selenium-manager never runs and
nothing is downloaded). Each browser gets a fresh profile directory; `stop()` quits it and then
checks, by PID, that chromedriver and every Chromium process it started are gone."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import time
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
FLAGS = (
    "--headless=new",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--no-proxy-server",
    "--window-size=1280,800",
)


def require_chromium() -> None:
    """Skip (with the reason) where Chromium or its driver is missing; under CI=true, fail."""
    missing = [path for path in (CHROMIUM, CHROMEDRIVER) if not os.access(path, os.X_OK)]
    try:
        import selenium  # noqa: F401
    except ImportError:
        missing.append("the selenium package (pip install -e '.[dev]')")
    if not missing:
        return
    reason = f"the browser tests need {', '.join(missing)} (apt-get install -y chromium chromium-driver)"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def descendants(pid: int) -> list[int]:
    """Every process below `pid`, read from /proc (children of each thread)."""
    found: list[int] = []
    pending = [pid]
    while pending:
        parent = pending.pop()
        for task in Path(f"/proc/{parent}/task").glob("*"):
            with contextlib.suppress(OSError):
                children = [int(child) for child in (task / "children").read_text().split()]
                found += children
                pending += children
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


class Browser:
    """One Chromium with its own user-data dir under `workdir`."""

    def __init__(self, workdir: Path) -> None:
        from selenium import webdriver
        from selenium.webdriver.chrome.service import Service

        self.workdir = workdir
        profile = workdir / "chromium-profile"
        profile.mkdir(parents=True, exist_ok=True)
        options = webdriver.ChromeOptions()
        options.binary_location = CHROMIUM
        for flag in (*FLAGS, f"--user-data-dir={profile}"):
            options.add_argument(flag)
        options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
        self.service = Service(executable_path=CHROMEDRIVER, log_output=str(workdir / "chromedriver.log"))
        self.driver = webdriver.Chrome(service=self.service, options=options)
        self.driver.set_page_load_timeout(30)
        self.driver.set_script_timeout(30)
        self.driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride", {"width": 1280, "height": 800, "deviceScaleFactor": 1, "mobile": False}
        )

    def stop(self) -> None:
        process = self.service.process
        pids = [process.pid, *descendants(process.pid)] if process is not None else []
        with contextlib.suppress(Exception):
            self.driver.quit()
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
            time.sleep(0.1)
        for pid in pids:
            if alive(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        if process is not None:
            process.wait(10)
        assert not [pid for pid in pids if alive(pid)], "a Chromium process outlived the test"
        shutil.rmtree(self.workdir / "chromium-profile", ignore_errors=True)

    def console_errors(self) -> list[str]:
        """Severe browser-console entries (a CSP violation, a script error, a failed request)."""
        return [entry["message"] for entry in self.driver.get_log("browser") if entry["level"] == "SEVERE"]
