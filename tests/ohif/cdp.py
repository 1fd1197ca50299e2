"""Headless Chromium driven through the DevTools protocol over a pipe (standard library only).

``--remote-debugging-pipe`` makes Chromium read protocol commands from its file descriptor 3 and
write replies and events to descriptor 4, each message a JSON text ended by a NUL byte (what
Puppeteer's ``pipe: true`` uses). No WebSocket, no driver, no extra package: a subprocess, two
pipes and a reader thread. Every wait has a deadline.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import json
import os
import queue
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType
from typing import Any

__all__ = ["CHROMIUM_FLAGS", "Browser", "CdpError"]

#: Flags that render WebGL on the CPU (SwiftShader) in a container without a GPU or a display.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--use-angle=swiftshader",
    "--enable-unsafe-swiftshader",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--mute-audio",
    "--hide-scrollbars",
)


class CdpError(RuntimeError):
    """A protocol command failed, timed out, or the browser went away."""


def _high_fd(fd: int) -> int:
    """A close-on-exec duplicate of ``fd`` numbered 10 or more (3 and 4 are Chromium's)."""
    new = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10)
    os.close(fd)
    return new


class Browser:
    """One headless Chromium with one page, driven over the DevTools pipe.

    Parameters
    ----------
    executable : str
        The ``chromium`` program.
    profile : Path
        An empty folder for the user data directory.
    window : tuple of int, optional
        Window size in CSS pixels.
    extra_flags : sequence of str, optional
        More command-line flags.
    """

    def __init__(
        self,
        executable: str,
        profile: Path,
        *,
        window: tuple[int, int] = (1400, 900),
        extra_flags: Sequence[str] = (),
    ) -> None:
        self.console: list[str] = []
        self.exceptions: list[str] = []
        self._replies: dict[int, queue.Queue[dict[str, Any]]] = {}
        self._lock = threading.Lock()
        self._next_id = 0
        self._session: str | None = None
        to_browser_r, to_browser_w = (_high_fd(fd) for fd in os.pipe())
        from_browser_r, from_browser_w = (_high_fd(fd) for fd in os.pipe())
        flags = [
            *CHROMIUM_FLAGS,
            f"--window-size={window[0]},{window[1]}",
            f"--user-data-dir={profile}",
            "--remote-debugging-pipe",
            *extra_flags,
            "about:blank",
        ]
        bash = shutil.which("bash") or "/bin/bash"
        # bash puts the pipe ends on descriptors 3 and 4, then becomes Chromium.
        script = f'exec "$0" "$@" 3<&{to_browser_r} 4>&{from_browser_w}'
        self._process = subprocess.Popen(
            [bash, "-c", script, executable, *flags],
            pass_fds=(to_browser_r, from_browser_w),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        os.close(to_browser_r)
        os.close(from_browser_w)
        self._out = os.fdopen(to_browser_w, "wb", buffering=0)
        self._in = os.fdopen(from_browser_r, "rb", buffering=0)
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    # -- plumbing ------------------------------------------------------------------------------

    def _read(self) -> None:
        buffer = b""
        while True:
            try:
                chunk = self._in.read(65536)
            except (OSError, ValueError):
                chunk = b""
            if not chunk:
                with self._lock:
                    waiting = list(self._replies.values())
                for q in waiting:
                    q.put({"error": {"message": "browser closed the DevTools pipe"}})
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for raw in messages:
                self._dispatch(json.loads(raw))

    def _dispatch(self, message: dict[str, Any]) -> None:
        if "id" in message:
            with self._lock:
                q = self._replies.get(message["id"])
            if q is not None:
                q.put(message)
            return
        method = message.get("method")
        params = message.get("params", {})
        if method == "Runtime.consoleAPICalled":
            text = " ".join(
                str(a.get("value", a.get("description", a.get("type", ""))))
                for a in params.get("args", [])
            )
            self.console.append(f"{params.get('type')}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            exc = details.get("exception", {})
            self.exceptions.append(str(exc.get("description") or details.get("text")))
        elif method == "Log.entryAdded":
            entry = params.get("entry", {})
            self.console.append(
                f"log {entry.get('level')}: {entry.get('text')} {entry.get('url', '')}"
            )

    def send(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 30.0
    ) -> dict[str, Any]:
        """Send one command (to the page once attached) and return its result."""
        with self._lock:
            self._next_id += 1
            ident = self._next_id
            q: queue.Queue[dict[str, Any]] = queue.Queue()
            self._replies[ident] = q
        message: dict[str, Any] = {"id": ident, "method": method, "params": params or {}}
        if self._session is not None and not method.startswith(("Target.", "Browser.")):
            message["sessionId"] = self._session
        try:
            try:
                self._out.write(json.dumps(message).encode() + b"\0")
            except (BrokenPipeError, ValueError) as exc:
                raise CdpError(f"{method}: browser is gone") from exc
            try:
                reply = q.get(timeout=timeout)
            except queue.Empty:
                raise CdpError(f"{method}: no reply within {timeout} s") from None
        finally:
            with self._lock:
                del self._replies[ident]
        if "error" in reply:
            raise CdpError(f"{method}: {reply['error'].get('message')}")
        result: dict[str, Any] = reply.get("result", {})
        return result

    # -- page ----------------------------------------------------------------------------------

    def attach(self, *, timeout: float = 20.0) -> None:
        """Attach to the first page and enable the domains the helpers use."""
        deadline = time.monotonic() + timeout
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            targets = [
                t
                for t in self.send("Target.getTargets", timeout=timeout)["targetInfos"]
                if t["type"] == "page"
            ]
            if targets:
                break
            time.sleep(0.05)
        if not targets:
            raise CdpError(f"no page target within {timeout} s")
        reply = self.send(
            "Target.attachToTarget", {"targetId": targets[0]["targetId"], "flatten": True}
        )
        self._session = reply["sessionId"]
        for domain in ("Page", "Runtime", "Log"):
            self.send(f"{domain}.enable")

    def navigate(self, url: str) -> None:
        reply = self.send("Page.navigate", {"url": url})
        if reply.get("errorText"):
            raise CdpError(f"navigation to {url} failed: {reply['errorText']}")

    def evaluate(self, expression: str, *, timeout: float = 30.0) -> Any:
        """Value of a JavaScript expression in the page (promises awaited)."""
        reply = self.send(
            "Runtime.evaluate",
            {"expression": expression, "returnByValue": True, "awaitPromise": True},
            timeout=timeout,
        )
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            raise CdpError(
                f"{expression[:80]!r}: "
                f"{details.get('exception', {}).get('description') or details.get('text')}"
            )
        return reply.get("result", {}).get("value")

    def wait_for(self, expression: str, *, timeout: float, interval: float = 0.25) -> Any:
        """Poll until the expression is truthy; return its value, or None after ``timeout``.

        Evaluation errors count as "not yet" (a page between two documents has no context).
        """
        deadline = time.monotonic() + timeout
        while True:
            try:
                value = self.evaluate(expression)
            except CdpError:
                value = None  # e.g. the page is between documents; try again
            if value:
                return value
            if time.monotonic() >= deadline:
                return None
            time.sleep(interval)

    def screenshot(self, path: Path) -> None:
        data = self.send("Page.captureScreenshot", {"format": "png"})["data"]
        path.write_bytes(base64.b64decode(data))

    # -- lifetime ------------------------------------------------------------------------------

    def close(self) -> None:
        """Ask the browser to quit, then make sure its process group is gone."""
        try:
            if self._process.poll() is None:
                self._session = None
                self.send("Browser.close", timeout=5)
        except CdpError:
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self._process.pid, signal.SIGKILL)
            self._process.wait(timeout=5)
        self._out.close()
        self._reader.join(timeout=5)
        self._in.close()

    def __enter__(self) -> Browser:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
