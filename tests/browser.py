"""Headless Chromium for tests that look at a page as a person would (tests/test_html_browser.py).

The browser is driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: Chromium
reads commands from fd 3 and writes replies and events to fd 4, JSON messages ended by a NUL byte),
so no websocket library and no network port are needed. Over it a test opens a local file, waits
for its load event, and reads what the person would see and what a developer console would show:
- the console's errors: console.error/assert calls, uncaught exceptions, and the browser's own log
  errors (a resource that failed to load, a blocked request);
- every URL the page requested (a self-contained page requests nothing but itself and data: URLs);
- screenshots (the whole page, or a clip such as one chart's box), the rendered DOM, element boxes,
  the images of the accessibility tree, and the page seen without colour vision.

``start_browser`` raises BrowserUnavailable (the tests skip with its reason) when no Chromium is
found or it does not start. Every wait has a timeout, and the browser's process group is killed
when it does not close by itself.
"""

from __future__ import annotations

import base64
import json
import os
import select
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BINARIES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome", "headless_shell")
"""Looked for on PATH in this order (Debian's package installs ``chromium``)."""
START_TIMEOUT_S = 20.0
COMMAND_TIMEOUT_S = 15.0
WINDOW = (1280, 900)
"""The viewport, in CSS pixels at device scale factor 1, so screenshots are the same everywhere."""


class BrowserUnavailable(RuntimeError):
    """No Chromium binary, or it did not start: the browser tests skip with this message."""


class BrowserError(RuntimeError):
    """The browser started but a command failed or timed out."""


def find_chromium() -> str | None:
    """$GRADCHECK_CHROMIUM when set, else the first of BINARIES on PATH."""
    chosen = os.environ.get("GRADCHECK_CHROMIUM")
    if chosen:
        return shutil.which(chosen)
    return next((path for name in BINARIES if (path := shutil.which(name))), None)


@dataclass(frozen=True)
class Box:
    """An element's border box in page (document) CSS pixels."""

    x: float
    y: float
    width: float
    height: float


@dataclass
class Page:
    """One tab: what it logged and requested so far, and commands in its session."""

    browser: Browser
    session: str
    target: str
    errors: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)

    def evaluate(self, expression: str) -> Any:
        """The JSON value of a JavaScript expression evaluated in the page (the test's own code; the
        page itself needs no script)."""
        reply = self.browser.command("Runtime.evaluate", {"expression": expression, "returnByValue": True},
                                     self.session)
        if "exceptionDetails" in reply:
            details = reply["exceptionDetails"]
            text = details.get("exception", {}).get("description") or details.get("text")
            raise BrowserError(f"evaluating {expression[:80]!r}: {text}")
        return reply["result"].get("value")

    def dom(self) -> str:
        """The rendered DOM serialised, as ``chromium --dump-dom`` prints it."""
        return str(self.evaluate("document.documentElement.outerHTML"))

    def box(self, selector: str, index: int = 0) -> Box | None:
        """The box of the ``index``-th element matching ``selector``, or None."""
        found = self.evaluate(f"(() => {{ const e = document.querySelectorAll({json.dumps(selector)})[{index}];"
                              " if (!e) return null; const r = e.getBoundingClientRect();"
                              " return [r.x + scrollX, r.y + scrollY, r.width, r.height]; })()")
        return Box(*found) if found else None

    def screenshot(self, clip: Box | None = None) -> bytes:
        """A PNG of ``clip``, or of the whole page (beyond the viewport when it scrolls)."""
        if clip is None:
            width, height = self.evaluate("[document.documentElement.scrollWidth,"
                                          " document.documentElement.scrollHeight]")
            clip = Box(0, 0, width, height)
        area = {"x": clip.x, "y": clip.y, "width": clip.width, "height": clip.height, "scale": 1}
        reply = self.browser.command("Page.captureScreenshot",
                                     {"format": "png", "clip": area, "captureBeyondViewport": True}, self.session)
        return base64.b64decode(reply["data"])

    def images_as_announced(self) -> list[str]:
        """The names of the page's images in its accessibility tree (what a screen reader announces
        for each <img> or role="img" element), in document order."""
        nodes = self.browser.command("Accessibility.getFullAXTree", session=self.session)["nodes"]
        return [str(node.get("name", {}).get("value", "")) for node in nodes
                if node.get("role", {}).get("value") == "image" and not node.get("ignored")]

    def greyscale(self, on: bool = True) -> None:
        """Render the page as a person without colour vision sees it (achromatopsia: every pixel grey)."""
        self.browser.command("Emulation.setEmulatedVisionDeficiency", {"type": "achromatopsia" if on else "none"},
                             self.session)

    def close(self) -> None:
        self.browser.command("Target.closeTarget", {"targetId": self.target})


class Browser:
    """A headless Chromium process and its DevTools pipe. Use ``start_browser``."""

    def __init__(self, process: subprocess.Popen[bytes], commands: int, replies: int, log: Path) -> None:
        self.process, self._commands, self._replies, self.log = process, commands, replies, log
        self._buffer = b""
        self._next_id = 0
        self._pages: dict[str, Page] = {}

    def command(self, method: str, params: dict[str, Any] | None = None, session: str | None = None,
                timeout: float = COMMAND_TIMEOUT_S) -> dict[str, Any]:
        """Send one command and return its result; events meanwhile go to their pages."""
        self._next_id += 1
        message: dict[str, Any] = {"id": self._next_id, "method": method, "params": params or {}}
        if session is not None:
            message["sessionId"] = session
        try:
            os.write(self._commands, json.dumps(message).encode() + b"\0")
        except OSError as error:
            raise BrowserError(f"{method}: the browser is gone ({error})") from error
        number = self._next_id
        reply = self._wait(lambda m: m.get("id") == number, timeout, method)
        if "error" in reply:
            raise BrowserError(f"{method}: {reply['error'].get('message')}")
        return dict(reply.get("result", {}))

    def open(self, url: str, timeout: float = COMMAND_TIMEOUT_S) -> Page:
        """A new tab showing ``url`` after its load event, with the console and requests recorded
        from before the navigation."""
        target = self.command("Target.createTarget", {"url": "about:blank"})["targetId"]
        session = self.command("Target.attachToTarget", {"targetId": target, "flatten": True})["sessionId"]
        page = self._pages[session] = Page(self, session, target)
        for domain in ("Page", "Runtime", "Log", "Network"):
            self.command(f"{domain}.enable", session=session)
        width, height = WINDOW
        self.command("Emulation.setDeviceMetricsOverride",
                     {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False}, session)
        self.command("Page.navigate", {"url": url}, session)
        self._wait(lambda m: m.get("method") == "Page.loadEventFired" and m.get("sessionId") == session,
                   timeout, f"the load event of {url}")
        return page

    def close(self, ask_first: bool = True) -> None:
        """Close the browser (asking it to, unless ``ask_first`` is False); kill its process group
        when it does not exit in a few seconds."""
        if ask_first:
            try:
                self.command("Browser.close", timeout=5)
            except BrowserError:
                pass
        try:
            self.process.wait(timeout=5 if ask_first else 0.1)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=5)
        finally:
            os.close(self._commands)
            os.close(self._replies)

    def _wait(self, wanted: Any, timeout: float, what: str) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                message = json.loads(raw)
                if wanted(message):
                    return dict(message)
                self._record(message)
            left = deadline - time.monotonic()
            ready = select.select([self._replies], [], [], max(left, 0))[0] if left > 0 else []
            if not ready:
                raise BrowserError(f"no answer from the browser within {timeout:g} s waiting for {what}")
            chunk = os.read(self._replies, 1 << 20)
            if not chunk:
                raise BrowserError(f"the browser closed its pipe waiting for {what} (its log: {self.log})")
            self._buffer += chunk

    def _record(self, message: dict[str, Any]) -> None:
        """Keep what a page's console would show as errors, and what it requested."""
        page = self._pages.get(message.get("sessionId", ""))
        if page is None:
            return
        method, params = message.get("method"), message.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            text = " ".join(str(arg.get("value", arg.get("description", ""))) for arg in params.get("args", []))
            page.errors.append(f"console.{params['type']}: {text}")
        elif method == "Runtime.exceptionThrown":
            details = params.get("exceptionDetails", {})
            page.errors.append(f"{details.get('text')}: {details.get('exception', {}).get('description', '')}")
        elif method == "Log.entryAdded" and params.get("entry", {}).get("level") == "error":
            entry = params["entry"]
            page.errors.append(f"{entry.get('source')}: {entry.get('text')} {entry.get('url', '')}".strip())
        elif method == "Network.requestWillBeSent":
            page.requests.append(params.get("request", {}).get("url", ""))

    def tail_of_log(self, lines: int = 3) -> str:
        """The browser's last stderr lines (why it did not start), its noise about D-Bus left out."""
        text = self.log.read_text(errors="replace") if self.log.exists() else ""
        kept = [line for line in text.splitlines() if line.strip() and "dbus" not in line.lower()]
        return " | ".join(kept[-lines:]) or "(no output)"


def start_browser(workdir: Path) -> Browser:
    """Start headless Chromium with a fresh profile under ``workdir``; BrowserUnavailable when there
    is none or it does not answer within START_TIMEOUT_S."""
    if os.name != "posix":  # the pipe on fds 3 and 4, and select() on it, are POSIX only
        raise BrowserUnavailable(f"driving Chromium over its DevTools pipe needs a POSIX system, not {os.name}")
    import fcntl

    binary = find_chromium()
    if binary is None and os.environ.get("GRADCHECK_CHROMIUM"):
        raise BrowserUnavailable(f"GRADCHECK_CHROMIUM={os.environ['GRADCHECK_CHROMIUM']} is not an executable")
    if binary is None:
        raise BrowserUnavailable("no Chromium found (looked for $GRADCHECK_CHROMIUM, " + ", ".join(BINARIES) +
                                 "); on Debian: apt-get install chromium")
    workdir.mkdir(parents=True, exist_ok=True)
    log = workdir / "chromium.log"
    commands_read, commands_write = os.pipe()
    replies_read, replies_write = os.pipe()

    def pipes_on_fd_3_and_4() -> None:  # in the child, between fork and exec
        # Moved above 10 first, so that dup2 never overwrites the other pipe end sitting on 3 or 4.
        high_in = fcntl.fcntl(commands_read, fcntl.F_DUPFD_CLOEXEC, 10)
        high_out = fcntl.fcntl(replies_write, fcntl.F_DUPFD_CLOEXEC, 10)
        os.dup2(high_in, 3)
        os.dup2(high_out, 4)

    # --no-sandbox: Chromium's sandbox refuses to run as root (CI containers); the page is our own.
    arguments = [binary, "--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--hide-scrollbars", "--no-first-run", "--no-default-browser-check", "--disable-extensions",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--mute-audio", f"--window-size={WINDOW[0]},{WINDOW[1]}", "--remote-debugging-pipe",
                 f"--user-data-dir={workdir / 'profile'}", "about:blank"]
    with log.open("wb") as stderr:
        try:
            process = subprocess.Popen(arguments, stdin=subprocess.DEVNULL, stdout=stderr, stderr=stderr,
                                       close_fds=False, preexec_fn=pipes_on_fd_3_and_4, start_new_session=True)
        except OSError as error:
            raise BrowserUnavailable(f"{binary} did not start: {error}") from error
        finally:
            os.close(commands_read)
            os.close(replies_write)
    browser = Browser(process, commands_write, replies_read, log)
    try:
        browser.command("Browser.getVersion", timeout=START_TIMEOUT_S)
    except BrowserError as error:
        browser.close(ask_first=False)
        raise BrowserUnavailable(f"{binary} did not start: {error}; its output: {browser.tail_of_log()}") from error
    return browser
