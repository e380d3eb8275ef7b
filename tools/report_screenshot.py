"""A screenshot of a labelling report as the README shows it: sorted by confidence, least confident first,
scrolled to the videos. Drives Debian's headless chromium (`make browser`) over the DevTools protocol.

    python -m tools.report_screenshot demo_output/labels/report.html docs/images/report.png
"""

from __future__ import annotations

import argparse
import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BROWSERS = ("chromium", "chromium-browser", "google-chrome")
SORT_BY_CONFIDENCE = """(() => {
  document.querySelector('#labels th[data-first] button').click();
  const heading = document.getElementById('videos-heading');
  window.scrollTo(0, heading.getBoundingClientRect().top + window.scrollY - 8);
})()"""


class Browser:
    """Headless chromium with `--remote-debugging-pipe`: it reads commands on fd 3 and writes replies on
    fd 4, each a JSON text ended by NUL. Used here and by the report's browser test (tests/test_report.py)."""

    def __init__(self, executable: str, profile: str, width: int, height: int):
        to_browser, self._send = os.pipe()
        self._receive_fd, from_browser = os.pipe()
        # The child's ends must become fds 3 and 4: first move them clear of those numbers.
        child_read = fcntl.fcntl(to_browser, fcntl.F_DUPFD_CLOEXEC, 10)
        child_write = fcntl.fcntl(from_browser, fcntl.F_DUPFD_CLOEXEC, 10)
        os.close(to_browser)
        os.close(from_browser)

        def child_fds():
            os.dup2(child_read, 3)
            os.dup2(child_write, 4)

        self.process = subprocess.Popen(
            [executable, "--headless", "--no-sandbox", "--disable-gpu", "--remote-debugging-pipe",
             f"--user-data-dir={profile}", f"--window-size={width},{height}", "--hide-scrollbars",
             "--no-first-run", "--disable-extensions", "about:blank"],
            close_fds=False, preexec_fn=child_fds, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        os.close(child_read)
        os.close(child_write)
        self._buffer, self._id, self.events, self._session = b"", 0, [], None
        target = self.call("Target.createTarget", url="about:blank")["targetId"]
        self._session = self.call("Target.attachToTarget", targetId=target, flatten=True)["sessionId"]

    def _message(self, deadline: float) -> dict:
        while b"\0" not in self._buffer:
            if not select.select([self._receive_fd], [], [], max(deadline - time.monotonic(), 0))[0]:
                raise TimeoutError("chromium did not answer")
            chunk = os.read(self._receive_fd, 1 << 16)
            if not chunk:
                raise RuntimeError("chromium closed the DevTools pipe")
            self._buffer += chunk
        message, self._buffer = self._buffer.split(b"\0", 1)
        return json.loads(message)

    def call(self, method: str, timeout: float = 30.0, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if self._session:
            message["sessionId"] = self._session
        os.write(self._send, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            reply = self._message(deadline)
            if reply.get("id") == self._id:
                if "error" in reply:
                    raise RuntimeError(f"{method}: {reply['error']}")
                return reply["result"]
            self.events.append(reply)

    def wait_for(self, event: str, timeout: float = 30.0) -> dict:
        """The first `event` the browser sent (taken out of `events`), waiting up to `timeout` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            for i, seen in enumerate(self.events):
                if seen.get("method") == event:
                    return self.events.pop(i)
            self.events.append(self._message(deadline))

    def evaluate(self, expression: str):
        """The value of a JavaScript expression in the page."""
        result = self.call("Runtime.evaluate", expression=expression, returnByValue=True)
        if "exceptionDetails" in result:
            raise RuntimeError(f"{expression}: {result['exceptionDetails']}")
        return result["result"].get("value")

    def click(self, selector: str) -> None:
        """A real left click (mouse events at the element's centre), not a scripted .click()."""
        box = self.evaluate(f"(() => {{ const r = document.querySelector({json.dumps(selector)})"
                            ".getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; })()")
        for kind in ("mousePressed", "mouseReleased"):
            self.call("Input.dispatchMouseEvent", type=kind, x=box[0], y=box[1], button="left", clickCount=1)

    def close(self) -> None:
        try:
            self.call("Browser.close", timeout=5)
        except (RuntimeError, TimeoutError, OSError):
            pass
        try:
            self.process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
        os.close(self._send)
        os.close(self._receive_fd)


def screenshot(report: Path, output: Path, width: int = 1100, height: int = 700) -> None:
    executable = next((path for path in map(shutil.which, BROWSERS) if path), None)
    if executable is None:
        raise SystemExit("error: chromium is not installed (make browser)")
    with tempfile.TemporaryDirectory(prefix="report-screenshot-") as profile:
        browser = Browser(executable, profile, width, height)
        try:
            browser.call("Emulation.setDeviceMetricsOverride", width=width, height=height, deviceScaleFactor=1,
                         mobile=False)
            browser.call("Page.enable")
            browser.call("Page.navigate", url=report.resolve().as_uri())
            browser.wait_for("Page.loadEventFired")
            browser.call("Runtime.evaluate", expression=SORT_BY_CONFIDENCE)
            png = base64.b64decode(browser.call("Page.captureScreenshot", format="png")["data"])
        finally:
            browser.close()
    output.write_bytes(png)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.report_screenshot", description=__doc__.split("\n\n")[0])
    parser.add_argument("report", type=Path, help="report.html written by beam_jobs.predict")
    parser.add_argument("output", type=Path, help="the PNG to write")
    args = parser.parse_args(argv)
    if not args.report.is_file():
        parser.error(f"{args.report} does not exist")
    screenshot(args.report, args.output)
    return 0


if __name__ == "__main__":
    sys.exit(main())
