"""A headless Chromium driven over the DevTools protocol, for tests/test_web.py.

Nothing to install from PyPI: Chromium talks the protocol over a pipe
(``--remote-debugging-pipe``: it reads JSON commands from file descriptor 3 and writes
replies and events to descriptor 4, each message ended by a NUL byte), and this module is a
small client for it.  One page, one session; the events of the page (failed requests,
console errors, responses) are kept in :attr:`Browser.events`.

Run as a script it takes a screenshot::

    python tests/chromium.py URL OUT.png [WIDTH HEIGHT]
"""

import base64
import fcntl
import json
import os
import queue
import shutil
import subprocess
import sys
import tempfile
import threading
import time

#: Debian's package (apt-get install chromium); others as found on PATH.
CANDIDATES = ("/usr/bin/chromium", "chromium", "chromium-browser", "google-chrome")

#: The network is closed where the tests run: nothing of Chromium's own may try to reach it
#: (updates, sync, QUIC probes), and every run gets an empty profile.
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-dev-shm-usage", "--hide-scrollbars", "--mute-audio")


def find_chromium():
    """The Chromium binary's path, or None."""
    for name in CANDIDATES:
        path = shutil.which(name)
        if path:
            return path
    return None


class ProtocolError(RuntimeError):
    """Chromium answered a command with an error, or stopped answering."""


class Browser:
    """A headless Chromium with one page, driven over the DevTools pipe."""

    def __init__(self, binary, width=1280, height=800, timeout=60.0):
        self.timeout = timeout
        self.events = []
        self._profile = tempfile.mkdtemp(prefix="fastmlp-chromium-")
        to_chrome_r, self._to_chrome = os.pipe()
        self._from_chrome, from_chrome_w = os.pipe()

        def descriptors():  # in the child: the pipe ends at Chromium's fixed 3 and 4
            # Moved out of the way first (either may be 3 or 4 already), and inheritable:
            # dup2 onto the same number would keep the close-on-exec flag.
            reading = fcntl.fcntl(to_chrome_r, fcntl.F_DUPFD, 10)
            writing = fcntl.fcntl(from_chrome_w, fcntl.F_DUPFD, 10)
            os.dup2(reading, 3)
            os.dup2(writing, 4)

        self._process = subprocess.Popen(
            [binary, *FLAGS, f"--user-data-dir={self._profile}", f"--window-size={width},{height}",
             "--remote-debugging-pipe", "about:blank"],
            preexec_fn=descriptors, close_fds=False, stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        os.close(to_chrome_r)
        os.close(from_chrome_w)
        self._stderr = []
        threading.Thread(target=lambda: self._stderr.extend(self._process.stderr),
                         daemon=True).start()
        self._replies = {}
        self._incoming = queue.Queue()
        self._next_id = 0
        threading.Thread(target=self._read, daemon=True).start()
        target = self.command("Target.createTarget", url="about:blank", session=False)["targetId"]
        self._session = self.command("Target.attachToTarget", targetId=target, flatten=True,
                                     session=False)["sessionId"]
        for domain in ("Page", "Network", "Runtime", "Log"):
            self.command(f"{domain}.enable")
        self.command("Emulation.setDeviceMetricsOverride", width=width, height=height,
                     deviceScaleFactor=1, mobile=False)

    # ---------------------------------------------------------------- protocol
    def _read(self):
        buffer = b""
        while True:
            try:
                chunk = os.read(self._from_chrome, 1 << 16)
            except OSError:  # closed by close()
                chunk = b""
            if not chunk:
                self._incoming.put(None)
                return
            buffer += chunk
            *messages, buffer = buffer.split(b"\0")
            for message in messages:
                self._incoming.put(json.loads(message))

    def _pump(self, deadline):
        try:
            message = self._incoming.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            return False
        if message is None:
            raise ProtocolError("Chromium closed the DevTools pipe:\n" + self.stderr())
        if "id" in message:
            self._replies[message["id"]] = message
        else:
            self.events.append(message)
        return True

    def command(self, method, session=True, **params):
        """Send one command to the page (or to the browser with ``session=False``) and
        return its result."""
        self._next_id += 1
        message = {"id": self._next_id, "method": method, "params": params}
        if session:
            message["sessionId"] = self._session
        try:
            os.write(self._to_chrome, json.dumps(message).encode() + b"\0")
        except BrokenPipeError:
            self._process.wait(timeout=10)
            raise ProtocolError(f"Chromium exited (status {self._process.returncode}):\n"
                                + self.stderr()) from None
        deadline = time.monotonic() + self.timeout
        while self._next_id not in self._replies:
            if not self._pump(deadline):
                raise ProtocolError(f"{method}: no answer in {self.timeout} s")
        reply = self._replies.pop(self._next_id)
        if "error" in reply:
            raise ProtocolError(f"{method}: {reply['error']}")
        return reply["result"]

    def stderr(self):
        return b"".join(self._stderr).decode(errors="replace")[-3000:]

    # ---------------------------------------------------------------- pages
    def open(self, url):
        """Load ``url`` and wait for its load event; clears :attr:`events` first."""
        self.events.clear()
        result = self.command("Page.navigate", url=url)
        if result.get("errorText"):
            raise ProtocolError(f"{url}: {result['errorText']}")
        self.wait_for_event("Page.loadEventFired")

    def wait_for_event(self, method):
        deadline = time.monotonic() + self.timeout
        seen = 0
        while True:
            for event in self.events[seen:]:
                if event["method"] == method:
                    return event
            seen = len(self.events)
            if not self._pump(deadline):
                raise ProtocolError(f"no {method} in {self.timeout} s")

    def evaluate(self, expression):
        """The value of a JavaScript expression in the page (promises are awaited)."""
        result = self.command("Runtime.evaluate", expression=expression, returnByValue=True,
                              awaitPromise=True)
        if "exceptionDetails" in result:
            raise ProtocolError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def wait_until(self, expression, what):
        """Poll ``expression`` until it is truthy; returns its value."""
        deadline = time.monotonic() + self.timeout
        while True:
            value = self.evaluate(expression)
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"{what}: not true after {self.timeout} s ({expression})")
            while self._pump(time.monotonic() + 0.1):  # keep the events flowing
                pass

    def settle(self, seconds=0.5):
        """Take in the events of the next ``seconds``."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            self._pump(deadline)

    def failed_requests(self):
        """``(url, reason)`` of every request of the page that failed or got an HTTP error
        status, since the last :meth:`open`."""
        urls = {}
        failed = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Network.requestWillBeSent":
                urls[params["requestId"]] = params["request"]["url"]
            elif event["method"] == "Network.loadingFailed":
                failed.append((urls.get(params["requestId"], "?"), params.get("errorText")))
            elif event["method"] == "Network.responseReceived":
                status = params["response"]["status"]
                if status >= 400:
                    failed.append((params["response"]["url"], f"HTTP {status}"))
        return failed

    def console_errors(self):
        """Uncaught exceptions and console.error/Log entries at level error."""
        errors = []
        for event in self.events:
            params = event.get("params", {})
            if event["method"] == "Runtime.exceptionThrown":
                details = params["exceptionDetails"]
                errors.append(details.get("exception", {}).get("description") or details["text"])
            elif event["method"] == "Log.entryAdded" and params["entry"]["level"] == "error":
                errors.append(params["entry"]["text"])
            elif event["method"] == "Runtime.consoleAPICalled" and params["type"] == "error":
                errors.append(" ".join(str(a.get("value", a.get("description")))
                                       for a in params["args"]))
        return errors

    def screenshot(self, path):
        """The viewport as a PNG file."""
        data = self.command("Page.captureScreenshot", format="png")["data"]
        with open(path, "wb") as f:
            f.write(base64.b64decode(data))

    def close(self):
        try:
            self.command("Browser.close", session=False)
        except ProtocolError:
            pass
        try:
            self._process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self._process.kill()
            self._process.wait()
        for fd in (self._to_chrome, self._from_chrome):
            try:
                os.close(fd)
            except OSError:
                pass
        shutil.rmtree(self._profile, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    url, out = sys.argv[1], sys.argv[2]
    size = [int(v) for v in sys.argv[3:5]] or [1280, 800]
    binary = find_chromium()
    if binary is None:
        sys.exit("chromium not found (apt-get install chromium)")
    with Browser(binary, *size) as browser:
        browser.open(url)
        browser.settle(3.0)
        browser.screenshot(out)
