"""The agent's control point: the state machine, kept on disk, with listeners for changes.

The hosting application drives it through the local API (``local_api``); the agent's own update
flow drives it with download and install events. Every change is written with fsync before it is
acknowledged, so a power cut never forgets a confirmation."""

from __future__ import annotations

import json
import os
import threading
from collections.abc import Callable
from pathlib import Path

from fleetlift_agent.state import AgentState, Event, Pending, Phase, transition

Listener = Callable[[AgentState, AgentState, Event], None]


class Controller:
    """Thread-safe holder of the agent state, persisted at ``path``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._listeners: list[Listener] = []
        self._state = self._load()

    def _load(self) -> AgentState:
        try:
            document = json.loads(self.path.read_text())
            return AgentState(Phase(document["phase"]), Pending(document["pending"]))
        except (FileNotFoundError, ValueError, KeyError):
            return AgentState()  # a new device starts busy: nothing happens until the app says ready

    def _save(self, state: AgentState) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_suffix(".tmp")
        with temporary.open("w") as handle:
            json.dump({"phase": state.phase.value, "pending": state.pending.value}, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, self.path)

    @property
    def state(self) -> AgentState:
        with self._lock:
            return self._state

    def subscribe(self, listener: Listener) -> None:
        """Call ``listener(before, after, event)`` after every change."""
        self._listeners.append(listener)

    def apply(self, event: Event) -> AgentState:
        """Apply an event (``IllegalTransition`` when it cannot happen now) and persist the result."""
        with self._lock:
            before = self._state
            after = transition(before, event)
            if after != before:
                self._save(after)
                self._state = after
        if after != before:
            for listener in list(self._listeners):
                listener(before, after, event)
        return after
