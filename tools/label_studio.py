"""A Label Studio server on this machine, for the review round trip test (tests/test_label_studio.py) and the
README's picture of a review task (tools/review_screenshot.py).

`make labelstudio` installs the pinned label-studio into .labelstudio-venv/, a venv of its own (it pins its own
Django stack, which must never meet the project's), and migrates an empty database once into
.labelstudio-venv/template/, which each server starts from (a fresh database takes a minute of migrations;
a copy of the template starts in seconds). A server listens on 127.0.0.1 only, keeps its data in a folder of
the caller's, serves local files from `files_root` (local-files storage on), has one user with a known API
token, and neither checks for a newer version nor reports anything anywhere.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import urllib.error
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".labelstudio-venv"
EXECUTABLE = VENV / "bin" / "label-studio"
TEMPLATE = VENV / "template"  # a migrated, empty data folder (make labelstudio)
DATABASE = "label_studio.sqlite3"
USER, PASSWORD, TOKEN = "reviewer@example.com", "review-password", "review-token-0123456789"


def installed() -> str | None:
    """Why no server can start here, or None when one can."""
    if not EXECUTABLE.exists():
        return f"Label Studio is not installed in {VENV.name}/ (make labelstudio)"
    if not (TEMPLATE / DATABASE).exists():
        return f"Label Studio's template database is missing in {TEMPLATE.relative_to(REPO)}/ (make labelstudio)"
    return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LabelStudioServer:
    """`label-studio start` on 127.0.0.1:<a free port> with its data in `data_dir`, serving local files under
    `files_root`; `api()` calls its REST API with the user's token. Use as a context manager."""

    def __init__(self, data_dir: Path, files_root: Path):
        self.data_dir, self.files_root = Path(data_dir), Path(files_root)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = self.data_dir / "server.log"
        self.process: subprocess.Popen | None = None

    def environment(self) -> dict[str, str]:
        env = {key: value for key, value in os.environ.items() if not key.startswith(("LABEL_STUDIO_", "DJANGO_"))}
        env.update(
            LABEL_STUDIO_BASE_DATA_DIR=str(self.data_dir),
            LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED="true",
            LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT=str(self.files_root),
            LABEL_STUDIO_USERNAME=USER, LABEL_STUDIO_PASSWORD=PASSWORD, LABEL_STUDIO_USER_TOKEN=TOKEN,
            LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN="true",  # `Authorization: Token ...` with the token above
            LABEL_STUDIO_LATEST_VERSION_CHECK="false", LABEL_STUDIO_COLLECT_ANALYTICS="false",
            LABEL_STUDIO_SENTRY_DSN="", LABEL_STUDIO_FRONTEND_SENTRY_DSN="",
        )
        return env

    def start(self, timeout: float = 180.0) -> "LabelStudioServer":
        reason = installed()
        if reason:
            raise RuntimeError(reason)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(TEMPLATE / DATABASE, self.data_dir / DATABASE)
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                [str(EXECUTABLE), "start", "--no-browser", "--internal-host", "127.0.0.1", "--port", str(self.port),
                 "--data-dir", str(self.data_dir), "--log-level", "WARNING"],
                env=self.environment(), stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                start_new_session=True)
        self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout: float) -> None:
        """Poll /health/ until it answers; between polls, wait on the process itself, so a server that dies
        is seen at once (with its log) rather than at the deadline."""
        for _ in range(int(timeout / 0.25)):
            try:
                with urllib.request.urlopen(f"{self.url}/health/", timeout=5) as reply:
                    if json.load(reply).get("status") == "UP":
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError, ValueError):
                pass
            try:
                self.process.wait(timeout=0.25)
            except subprocess.TimeoutExpired:
                continue
            raise RuntimeError(f"Label Studio exited with status {self.process.returncode}:\n{self.logs()}")
        raise RuntimeError(f"Label Studio did not answer within {timeout:.0f} s:\n{self.logs()}")

    def api(self, method: str, path: str, body=None, raw: bool = False):
        """The JSON (or with `raw` the bytes) of a REST call; an HTTP error raises with the server's answer."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Token {TOKEN}", "Content-Type": "application/json"}
        request = urllib.request.Request(f"{self.url}{path}", data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=60) as reply:
                content = reply.read()
        except urllib.error.HTTPError as error:
            raise RuntimeError(f"{method} {path}: {error.code} {error.read()[:2000]!r}") from None
        return content if raw else json.loads(content or b"null")

    def logs(self, last: int = 60) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-last:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait()

    def __enter__(self) -> "LabelStudioServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # --- What the review needs of a server ----------------------------------------------------------------

    def create_review_project(self, title: str, config: str, videos_dir: Path) -> int:
        """A project with `config`, and a local-files storage on `videos_dir` (which must be under
        files_root): Label Studio serves a local file only to projects with a storage holding it. The
        storage is not synced: the tasks come from the tasks file."""
        project = self.api("POST", "/api/projects", {"title": title, "label_config": config})["id"]
        self.api("POST", "/api/storages/localfiles", {"project": project, "path": str(videos_dir),
                                                      "title": "videos", "use_blob_urls": True})
        return project

    def import_tasks(self, project: int, tasks: list) -> list[int]:
        return self.api("POST", f"/api/projects/{project}/import?return_task_ids=true", tasks)["task_ids"]

    def export(self, project: int) -> bytes:
        """The project's JSON export (the tasks with annotations), as Label Studio's Export button gives it."""
        return self.api("GET", f"/api/projects/{project}/export?exportType=JSON", raw=True)
