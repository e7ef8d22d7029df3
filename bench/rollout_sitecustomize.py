"""Copied as ``sitecustomize.py`` onto the PYTHONPATH of the server that ``bench/rollout.py`` runs:
in every server process it counts the statements sent through SQLAlchemy and the time each kind
takes (from handing it to the driver until the driver returns: the database's work plus the round
trip), keyed by the statement's first 90 characters, and writes them to a file per process every
half second. Does nothing without FLEETLIFT_BENCH_STATEMENTS_DIR."""

import os

_directory = os.environ.get("FLEETLIFT_BENCH_STATEMENTS_DIR")
if _directory:
    import json
    import re
    import threading
    import time
    from typing import Any

    from sqlalchemy import event
    from sqlalchemy.engine import Engine

    _count = [0]
    _kinds: dict[str, list[float]] = {}
    _lock = threading.Lock()

    @event.listens_for(Engine, "before_cursor_execute")
    def _started(conn: Any, *_arguments: Any) -> None:
        _count[0] += 1
        conn.info["bench_started"] = time.perf_counter()

    @event.listens_for(Engine, "after_cursor_execute")
    def _ended(conn: Any, _cursor: Any, statement: str, *_arguments: Any) -> None:
        took = time.perf_counter() - conn.info.pop("bench_started", time.perf_counter())
        key = re.sub(r"\s+", " ", statement)[:90]
        with _lock:
            entry = _kinds.setdefault(key, [0, 0.0])
            entry[0] += 1
            entry[1] += took

    def _write() -> None:
        path = os.path.join(_directory, f"{os.getpid()}.json")
        while True:
            with _lock:
                document = {"count": _count[0], "kinds": dict(_kinds)}
            with open(path + ".partial", "w") as output:
                json.dump(document, output)
            os.replace(path + ".partial", path)
            time.sleep(0.5)

    threading.Thread(target=_write, daemon=True).start()
