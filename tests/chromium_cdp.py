"""Test helper (not shipped): drive headless Chromium over the DevTools protocol, standard library only.

Chromium is started with ``--remote-debugging-pipe``: it reads protocol messages (JSON, each ended by a NUL
byte) on file descriptor 3 and writes replies and events on descriptor 4, so no port is opened and no
websocket client is needed.  Network access is cut off twice: every host name resolves to nothing
(``--host-resolver-rules``) and every proxied request goes to a closed local port, so a page that tries to
fetch something fails *and* the attempt is recorded (``Network.requestWillBeSent``) by :class:`Chromium`.

Used by ``tests/test_ingest_report.py`` to check that an HTML page is self-contained (no request leaves it,
every image decodes) without putting any script into the page itself.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["CHROMIUM", "Chromium", "PageLoad"]

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = [
    "--headless",
    "--no-sandbox",  # required when running as root (containers, CI)
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--proxy-server=127.0.0.1:9",
    "--proxy-bypass-list=<-loopback>",
    "--remote-debugging-pipe",
]


class PageLoad:
    """What one navigation did: the URLs the page requested, and the ones that failed."""

    def __init__(self) -> None:
        self.requests: list[str] = []
        self.failed: list[str] = []
        self._ids: dict[str, str] = {}

    def external(self) -> list[str]:
        """Requests other than the page's own file and ``data:`` URIs decoded in place."""
        return [url for url in self.requests[1:] if not url.startswith("data:")]


class Chromium:
    """One headless Chromium with one page, controlled over the DevTools pipe.

    Args:
        user_data_dir: an empty scratch folder for the profile.
        width, height: viewport in CSS pixels.
        timeout: seconds to wait for any single reply or for a page load.
    """

    def __init__(self, user_data_dir: Path, width: int = 1280, height: int = 900, timeout: float = 60.0) -> None:
        if CHROMIUM is None:
            raise FileNotFoundError("chromium not found; install it with `apt-get install -y chromium`")
        self.timeout = timeout
        to_browser_read, self._to_browser = os.pipe()
        self._from_browser, from_browser_write = os.pipe()

        def wire_fds() -> None:  # in the child, before exec: the protocol wants exactly fds 3 and 4
            read_end = fcntl.fcntl(to_browser_read, fcntl.F_DUPFD, 10)
            write_end = fcntl.fcntl(from_browser_write, fcntl.F_DUPFD, 10)
            os.dup2(read_end, 3)
            os.dup2(write_end, 4)

        self._stderr = open(Path(user_data_dir) / "chromium.log", "wb")
        self.process = subprocess.Popen(
            [CHROMIUM, *FLAGS, f"--user-data-dir={user_data_dir}", f"--window-size={width},{height}", "about:blank"],
            stdin=subprocess.DEVNULL,
            stdout=self._stderr,
            stderr=self._stderr,
            preexec_fn=wire_fds,
            pass_fds=(3, 4),
        )
        os.close(to_browser_read)
        os.close(from_browser_write)
        self._next_id = 0
        self._messages: queue.Queue = queue.Queue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        target = self.call("Target.createTarget", {"url": "about:blank"})["targetId"]
        self.session = self.call("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        for method in ("Page.enable", "Network.enable", "Runtime.enable"):
            self.call(method, session=self.session)
        self.call(
            "Emulation.setDeviceMetricsOverride",
            {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False},
            session=self.session,
        )

    # -- protocol --------------------------------------------------------------------------------
    def _read(self) -> None:
        buffer = b""
        while True:
            chunk = os.read(self._from_browser, 1 << 16)
            if not chunk:
                self._messages.put(None)
                return
            buffer += chunk
            *complete, buffer = buffer.split(b"\0")
            for raw in complete:
                self._messages.put(json.loads(raw))

    def _next(self, deadline: float) -> dict[str, Any]:
        try:
            message = self._messages.get(timeout=max(deadline - time.monotonic(), 0.01))
        except queue.Empty:
            raise TimeoutError("no reply from chromium") from None
        if message is None:
            raise RuntimeError("chromium closed the DevTools pipe")
        return message

    def call(self, method: str, params: dict | None = None, session: str | None = None, load: PageLoad | None = None):
        """Send one command and return its result; events seen meanwhile go to ``load``."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session:
            message["sessionId"] = session
        os.write(self._to_browser, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + self.timeout
        while True:
            reply = self._next(deadline)
            if reply.get("id") == self._next_id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply.get("result", {})
            self._event(reply, load)

    @staticmethod
    def _event(message: dict[str, Any], load: PageLoad | None) -> None:
        if load is None:
            return
        method, params = message.get("method"), message.get("params", {})
        if method == "Network.requestWillBeSent":
            load.requests.append(params["request"]["url"])
            load._ids[params["requestId"]] = params["request"]["url"]
        elif method == "Network.loadingFailed":
            load.failed.append(load._ids.get(params["requestId"], "?"))

    # -- page ------------------------------------------------------------------------------------
    def open(self, url: str, settle_s: float = 0.5) -> PageLoad:
        """Navigate and wait for the load event (all images decoded or failed), then a short settle time."""
        load = PageLoad()
        self.call("Page.navigate", {"url": url}, session=self.session, load=load)
        deadline = time.monotonic() + self.timeout
        while True:
            message = self._next(deadline)
            self._event(message, load)
            if message.get("method") == "Page.loadEventFired":
                break
        end = time.monotonic() + settle_s
        while time.monotonic() < end:
            try:
                self._event(self._next(end), load)
            except TimeoutError:
                break
        return load

    def evaluate(self, expression: str) -> Any:
        """Value of a JavaScript expression in the page (the test's script, never the page's)."""
        result = self.call("Runtime.evaluate", {"expression": expression, "returnByValue": True}, session=self.session)
        if "exceptionDetails" in result:
            raise RuntimeError(f"evaluate failed: {result['exceptionDetails']}")
        return result["result"].get("value")

    def screenshot(self, path: Path, height: int | None = None) -> Path:
        """PNG of the page from the top: ``height`` CSS pixels, or the whole page."""
        size = self.call("Page.getLayoutMetrics", session=self.session)["cssContentSize"]
        clip = {"x": 0, "y": 0, "width": size["width"], "height": height or size["height"], "scale": 1}
        result = self.call(
            "Page.captureScreenshot",
            {"format": "png", "clip": clip, "captureBeyondViewport": True},
            session=self.session,
        )
        path.write_bytes(base64.b64decode(result["data"]))
        return path

    def close(self) -> None:
        try:
            self.call("Browser.close")
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        self._reader.join(timeout=5)
        for fd in (self._to_browser, self._from_browser):
            try:
                os.close(fd)
            except OSError:
                pass
        self._stderr.close()

    def __enter__(self) -> Chromium:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
