"""The Airflow stack the tests start lives in the product (pinrec/airflow_stack.py, also used by
`pinrec rehearse`); this module re-exports it and adds the headless browser the UI test drives."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

from pinrec.airflow_stack import REPO, AirflowStack, free_port, new_stack  # noqa: F401

# -- a real browser, driven over the Chrome DevTools Protocol (no extra Python packages) ------
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--no-first-run"]


def chromium_binary() -> str | None:
    for name in ("chromium", "chromium-browser"):
        if path := shutil.which(name):
            return path
    return None


class Chromium:
    """Headless Debian `chromium` with one page, controlled through its DevTools websocket."""

    def __init__(self, root: Path, width: int = 1600, height: int = 1000):
        from websockets.sync.client import connect

        self.port = free_port()
        profile = root / "chromium-profile"
        self.log = open(root / "chromium.log", "wb")
        self.proc = subprocess.Popen(
            [chromium_binary(), *CHROMIUM_FLAGS, f"--remote-debugging-port={self.port}",
             "--remote-debugging-address=127.0.0.1", f"--user-data-dir={profile}",
             f"--window-size={width},{height}", "about:blank"],
            stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
        deadline, pages = time.time() + 30, []
        while not pages:
            if time.time() > deadline or self.proc.poll() is not None:
                self.close()
                raise RuntimeError(f"chromium did not open its DevTools port; see {self.log.name}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/json/list", timeout=2) as r:
                    pages = [t for t in json.loads(r.read()) if t["type"] == "page"]
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.3)
        self.ws = connect(pages[0]["webSocketDebuggerUrl"], max_size=None, open_timeout=10)
        self._id = 0
        self.send("Page.enable")
        self.send("Runtime.enable")

    def send(self, method: str, **params):
        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv(timeout=60))
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def goto(self, url: str) -> None:
        self.send("Page.navigate", url=url)

    def js(self, expression: str):
        r = self.send("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in r:
            raise RuntimeError(f"javascript failed: {r['exceptionDetails']}")
        return r["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 60) -> None:
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:
                if self.js(expression):
                    return
            except RuntimeError:
                pass  # the page is navigating
            time.sleep(0.5)
        raise TimeoutError(f"page never satisfied {expression!r}; it shows: "
                           f"{(self.js('document.body && document.body.innerText') or '')[:1500]}")

    def screenshot(self, path: Path) -> None:
        import base64

        data = self.send("Page.captureScreenshot", format="png", captureBeyondViewport=False)["data"]
        path.write_bytes(base64.b64decode(data))

    def close(self) -> None:
        try:
            self.ws.close()
        except Exception:
            pass
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self.log.close()
