"""The agent's downloader against small real HTTP servers that misbehave on purpose: dropped
connections, restarts, ignored ranges, wrong bytes, refused links, full disks."""

from __future__ import annotations

import hashlib
import itertools
import os
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from fleetlift_agent.download import (
    CorruptDownload,
    Downloader,
    DownloadError,
    DownloadStopped,
    LinkExpired,
    NoSpace,
)

CONTENT = os.urandom(100_000)
SHA = hashlib.sha256(CONTENT).hexdigest()
ETAG = '"v1"'


@dataclass
class Behaviour:
    """What the test server does; changed by tests while it runs."""

    content: bytes = CONTENT
    drop_after: list[int] = field(default_factory=list)  # per request, in order: bytes before a drop
    ignore_range: bool = False
    status: int | None = None  # answer this status instead of the file
    requests: list[dict[str, str | None]] = field(default_factory=list)


class FileServer:
    """A threaded HTTP server for one file that honours Range and If-Range like fleetlift does."""

    def __init__(self, behaviour: Behaviour, port: int = 0) -> None:
        self.behaviour = behaviour
        handler = _handler(behaviour)
        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), handler)
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/file.bin"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05})
        self.thread.start()

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def _handler(behaviour: Behaviour) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            behaviour.requests.append(
                {"range": self.headers.get("Range"), "if-range": self.headers.get("If-Range")}
            )
            if behaviour.status is not None:
                self.send_response(behaviour.status)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            content = behaviour.content
            start = 0
            wanted = self.headers.get("Range")
            if_range = self.headers.get("If-Range")
            if wanted and not behaviour.ignore_range and if_range in (None, ETAG):
                start = int(wanted.removeprefix("bytes=").split("-")[0])
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(content) - 1}/{len(content)}")
            else:
                self.send_response(200)
            body = content[start:]
            self.send_header("Content-Length", str(len(body)))
            self.send_header("ETag", ETAG)
            self.end_headers()
            limit = behaviour.drop_after.pop(0) if behaviour.drop_after else None
            if limit is None:
                self.wfile.write(body)
                return
            # A reset mid-transfer: some bytes, then the connection is gone.
            self.wfile.write(body[:limit])
            self.close_connection = True
            self.connection.shutdown(socket.SHUT_RDWR)

        def log_message(self, *args: object) -> None:
            pass

    return Handler


@pytest.fixture
def behaviour() -> Behaviour:
    return Behaviour()


@pytest.fixture
def server(behaviour: Behaviour) -> Iterator[FileServer]:
    instance = FileServer(behaviour)
    yield instance
    instance.stop()


def downloader(directory: Path, **options: Any) -> Downloader:
    """Quick retries and no free-disk floor, so the tests run fast on any machine."""
    settings: dict[str, Any] = {"min_free_bytes": 0, "backoff": 0.01, "max_backoff": 0.05, **options}
    return Downloader(directory, **settings)


def test_a_download_arrives_verified_under_its_name(server: FileServer, tmp_path: Path) -> None:
    reports: list[tuple[int, int]] = []
    path = downloader(tmp_path).fetch(
        server.url, size=len(CONTENT), sha256=SHA, name="fw.bin", progress=lambda d, t: reports.append((d, t))
    )
    assert path == tmp_path / "fw.bin" and path.read_bytes() == CONTENT
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fw.bin"]  # no .part, no metadata left
    assert reports[0] == (0, len(CONTENT)) and reports[-1] == (len(CONTENT), len(CONTENT))
    assert len(reports) <= 102  # at most once per percent (or second)


def test_a_relative_link_resolves_against_the_base_url(server: FileServer, tmp_path: Path) -> None:
    base = f"http://127.0.0.1:{server.port}"
    path = downloader(tmp_path, base_url=base).fetch("/file.bin?x=1", size=len(CONTENT), sha256=SHA, name="a")
    assert path.read_bytes() == CONTENT
    with pytest.raises(DownloadError, match="base_url"):
        downloader(tmp_path).fetch("/file.bin", size=len(CONTENT), sha256=SHA, name="b")


def test_dropped_connections_resume_where_they_stopped(
    server: FileServer, behaviour: Behaviour, tmp_path: Path
) -> None:
    behaviour.drop_after = [30_000, 25_000]
    path = downloader(tmp_path).fetch(server.url, size=len(CONTENT), sha256=SHA, name="fw.bin")
    assert path.read_bytes() == CONTENT
    assert behaviour.requests == [
        {"range": None, "if-range": None},
        {"range": "bytes=30000-", "if-range": ETAG},
        {"range": "bytes=55000-", "if-range": ETAG},
    ]


def test_a_restarted_server_is_waited_for(behaviour: Behaviour, tmp_path: Path) -> None:
    behaviour.drop_after = [40_000]
    first = FileServer(behaviour)
    restarted: list[FileServer] = []

    def restart() -> None:
        # The first server goes away right after dropping the transfer, and comes back a bit later.
        while not behaviour.requests:
            time.sleep(0.01)
        first.stop()
        time.sleep(0.4)
        restarted.append(FileServer(behaviour, port=first.port))

    thread = threading.Thread(target=restart)
    thread.start()
    try:
        path = downloader(tmp_path, backoff=0.1, max_backoff=0.3, retries=10).fetch(
            first.url, size=len(CONTENT), sha256=SHA, name="fw.bin"
        )
    finally:
        thread.join()
        for instance in restarted:
            instance.stop()
    assert path.read_bytes() == CONTENT
    assert behaviour.requests[-1]["range"] == "bytes=40000-"


def test_it_gives_up_after_its_retries(tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # nothing listens here
    with pytest.raises(DownloadError, match="gave up after 3 attempts"):
        downloader(tmp_path, retries=2).fetch(f"http://127.0.0.1:{port}/x", size=10, sha256=SHA, name="x")


def test_wrong_bytes_are_refused_and_nothing_is_kept(
    server: FileServer, behaviour: Behaviour, tmp_path: Path
) -> None:
    behaviour.content = bytes(len(CONTENT))  # the right size, the wrong bytes
    with pytest.raises(CorruptDownload) as caught:
        downloader(tmp_path).fetch(server.url, size=len(CONTENT), sha256=SHA, name="fw.bin")
    message = str(caught.value)
    assert SHA in message and hashlib.sha256(behaviour.content).hexdigest() in message
    assert list(tmp_path.iterdir()) == []


def test_a_file_of_another_size_is_refused(server: FileServer, behaviour: Behaviour, tmp_path: Path) -> None:
    behaviour.content = CONTENT + b"extra"
    with pytest.raises(CorruptDownload, match=f"expected {len(CONTENT)} bytes"):
        downloader(tmp_path).fetch(server.url, size=len(CONTENT), sha256=SHA, name="fw.bin")
    assert list(tmp_path.iterdir()) == []


def test_a_part_left_by_a_previous_process_is_resumed(
    server: FileServer, behaviour: Behaviour, tmp_path: Path
) -> None:
    received: list[int] = []

    def stop_midway() -> bool:
        return bool(received) and received[-1] >= 40_000

    with pytest.raises(DownloadStopped):
        downloader(tmp_path, chunk_size=8192).fetch(
            server.url,
            size=len(CONTENT),
            sha256=SHA,
            name="fw.bin",
            progress=lambda done, _: received.append(done),
            should_stop=stop_midway,
        )
    kept = (tmp_path / "fw.bin.part").stat().st_size
    assert 40_000 <= kept < len(CONTENT) and not (tmp_path / "fw.bin").exists()
    behaviour.requests.clear()
    path = downloader(tmp_path).fetch(
        server.url, size=len(CONTENT), sha256=SHA, name="fw.bin"
    )  # a new process
    assert path.read_bytes() == CONTENT
    assert behaviour.requests == [{"range": f"bytes={kept}-", "if-range": ETAG}]


def test_a_hand_made_part_without_validator_is_resumed(
    server: FileServer, behaviour: Behaviour, tmp_path: Path
) -> None:
    (tmp_path / "fw.bin.part").write_bytes(CONTENT[:12_345])
    path = downloader(tmp_path).fetch(server.url, size=len(CONTENT), sha256=SHA, name="fw.bin")
    assert path.read_bytes() == CONTENT
    assert behaviour.requests == [{"range": "bytes=12345-", "if-range": None}]


def test_a_part_larger_than_the_file_is_discarded(
    server: FileServer, behaviour: Behaviour, tmp_path: Path
) -> None:
    (tmp_path / "fw.bin.part").write_bytes(CONTENT + b"leftover")
    path = downloader(tmp_path).fetch(server.url, size=len(CONTENT), sha256=SHA, name="fw.bin")
    assert path.read_bytes() == CONTENT
    assert behaviour.requests == [{"range": None, "if-range": None}]


def test_a_changed_file_restarts_through_if_range(
    server: FileServer, behaviour: Behaviour, tmp_path: Path
) -> None:
    (tmp_path / "fw.bin.part").write_bytes(CONTENT[:5000])
    (tmp_path / "fw.bin.part.json").write_text(
        f'{{"size": {len(CONTENT)}, "sha256": "{SHA}", "validator": "\\"old\\""}}'
    )
    path = downloader(tmp_path).fetch(server.url, size=len(CONTENT), sha256=SHA, name="fw.bin")
    assert path.read_bytes() == CONTENT
    assert behaviour.requests == [{"range": "bytes=5000-", "if-range": '"old"'}]  # answered 200: whole file


def test_a_server_that_ignores_range_restarts_cleanly(
    server: FileServer, behaviour: Behaviour, tmp_path: Path
) -> None:
    behaviour.ignore_range = True
    behaviour.drop_after = [30_000]
    path = downloader(tmp_path).fetch(server.url, size=len(CONTENT), sha256=SHA, name="fw.bin")
    assert path.read_bytes() == CONTENT  # the 200 answer replaced the first 30000 bytes, not appended
    assert [r["range"] for r in behaviour.requests] == [None, "bytes=30000-"]


def test_a_finished_download_is_not_fetched_again(
    server: FileServer, behaviour: Behaviour, tmp_path: Path
) -> None:
    (tmp_path / "fw.bin").write_bytes(CONTENT)
    assert downloader(tmp_path).fetch(server.url, size=len(CONTENT), sha256=SHA, name="fw.bin").exists()
    assert behaviour.requests == []
    (tmp_path / "fw.bin").write_bytes(b"damaged")  # a bad file under the final name is replaced
    assert downloader(tmp_path).fetch(
        server.url, size=len(CONTENT), sha256=SHA, name="fw.bin"
    ).read_bytes() == (CONTENT)


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_link_is_link_expired(
    server: FileServer, behaviour: Behaviour, tmp_path: Path, status: int
) -> None:
    behaviour.status = status
    with pytest.raises(LinkExpired):
        downloader(tmp_path).fetch(server.url, size=len(CONTENT), sha256=SHA, name="fw.bin")
    assert len(behaviour.requests) == 1  # not retried: only a fresh link helps


def test_a_missing_file_is_not_retried(server: FileServer, behaviour: Behaviour, tmp_path: Path) -> None:
    behaviour.status = 404
    with pytest.raises(DownloadError, match="404"):
        downloader(tmp_path).fetch(server.url, size=len(CONTENT), sha256=SHA, name="fw.bin")
    assert len(behaviour.requests) == 1


def test_an_overloaded_server_is_retried(server: FileServer, behaviour: Behaviour, tmp_path: Path) -> None:
    behaviour.status = 503

    def recover() -> None:
        while len(behaviour.requests) < 2:
            time.sleep(0.01)
        behaviour.status = None

    thread = threading.Thread(target=recover)
    thread.start()
    path = downloader(tmp_path).fetch(server.url, size=len(CONTENT), sha256=SHA, name="fw.bin")
    thread.join()
    assert path.read_bytes() == CONTENT and len(behaviour.requests) >= 3


def test_the_rate_limit_holds(server: FileServer, behaviour: Behaviour, tmp_path: Path) -> None:
    behaviour.content = os.urandom(200_000)
    started = time.monotonic()
    downloader(tmp_path, rate_limit=100_000).fetch(
        server.url, size=200_000, sha256=hashlib.sha256(behaviour.content).hexdigest(), name="slow.bin"
    )
    elapsed = time.monotonic() - started
    assert 1.8 <= elapsed < 4.0


def test_a_small_rate_limit_is_smooth(server: FileServer, behaviour: Behaviour, tmp_path: Path) -> None:
    behaviour.content = os.urandom(300)
    stamps: list[tuple[float, int]] = []
    started = time.monotonic()
    downloader(tmp_path, rate_limit=200).fetch(
        server.url,
        size=300,
        sha256=hashlib.sha256(behaviour.content).hexdigest(),
        name="tiny.bin",
        progress=lambda done, _: stamps.append((time.monotonic() - started, done)),
    )
    assert 1.2 <= time.monotonic() - started < 3.0
    # Bytes trickle in small pieces rather than one burst after a long wait.
    assert len(stamps) > 20 and all(b - a <= 20 for (_, a), (_, b) in itertools.pairwise(stamps))


def test_stop_is_honoured_between_chunks(server: FileServer, tmp_path: Path) -> None:
    with pytest.raises(DownloadStopped):
        downloader(tmp_path).fetch(
            server.url, size=len(CONTENT), sha256=SHA, name="fw.bin", should_stop=lambda: True
        )
    assert not (tmp_path / "fw.bin").exists()


def test_too_little_free_disk_is_refused(server: FileServer, behaviour: Behaviour, tmp_path: Path) -> None:
    with pytest.raises(NoSpace, match="free on disk"):
        downloader(tmp_path, min_free_bytes=10**18).fetch(
            server.url, size=len(CONTENT), sha256=SHA, name="fw.bin"
        )
    assert behaviour.requests == []


def test_the_download_directory_quota_is_kept(
    server: FileServer, behaviour: Behaviour, tmp_path: Path
) -> None:
    (tmp_path / "older.bin").write_bytes(bytes(60_000))
    bounded = downloader(tmp_path, max_bytes=150_000)
    with pytest.raises(NoSpace, match="limit of 150000 bytes"):
        bounded.fetch(server.url, size=len(CONTENT), sha256=SHA, name="fw.bin")
    assert behaviour.requests == []
    assert bounded.prune(keep={"fw.bin"}) == ["older.bin"]
    assert bounded.fetch(server.url, size=len(CONTENT), sha256=SHA, name="fw.bin").read_bytes() == CONTENT


def test_prune_removes_finished_and_partial_downloads(tmp_path: Path) -> None:
    for name in ("keep.bin", "keep.bin.part", "old.bin", "stale.bin.part", "stale.bin.part.json"):
        (tmp_path / name).write_bytes(b"x")
    assert downloader(tmp_path).prune(keep={"keep.bin"}) == [
        "old.bin",
        "stale.bin.part",
        "stale.bin.part.json",
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep.bin", "keep.bin.part"]


@pytest.mark.parametrize("name", ["../escape", "a/b", ".hidden", "", "x.part"])
def test_names_stay_inside_the_directory(tmp_path: Path, name: str) -> None:
    with pytest.raises(ValueError):
        downloader(tmp_path).fetch("http://127.0.0.1:9/x", size=1, sha256=SHA, name=name)


def test_a_stalled_transfer_times_out_and_resumes(tmp_path: Path) -> None:
    hold = threading.Event()
    calls: list[str | None] = []

    class Staller(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_GET(self) -> None:
            calls.append(self.headers.get("Range"))
            start = int((self.headers.get("Range") or "bytes=0-").removeprefix("bytes=").split("-")[0])
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(CONTENT) - 1}/{len(CONTENT)}")
            self.send_header("Content-Length", str(len(CONTENT) - start))
            self.end_headers()
            if start == 0:
                self.wfile.write(CONTENT[:20_000])
                hold.wait(5)  # stalls without closing: only the read timeout notices
                self.close_connection = True
                return
            self.wfile.write(CONTENT[start:])

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Staller)
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        path = downloader(tmp_path, timeout=0.5).fetch(
            f"http://127.0.0.1:{httpd.server_address[1]}/f", size=len(CONTENT), sha256=SHA, name="fw.bin"
        )
    finally:
        hold.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)
    assert path.read_bytes() == CONTENT and calls == [None, "bytes=20000-"]
