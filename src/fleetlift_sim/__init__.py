"""fleetlift-sim: many virtual devices in one process, speaking the real device protocol over HTTP.

It never imports the server; it only talks to it. ``fleetlift_sim.cli`` is the command line,
``fleet.run_fleet`` the entry point for code.
"""

from __future__ import annotations

from .fleet import run_fleet
from .settings import SimSettings

__all__ = ["SimSettings", "run_fleet"]
