"""Render the management API's OpenAPI document as YAML (``python -m fleetlift.openapi``)."""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path
from typing import Any

import yaml

from fleetlift.app import create_app
from fleetlift.config import Settings


def document() -> dict[str, Any]:
    """The OpenAPI document of an app built on throwaway settings (the document is static)."""
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(data_dir=Path(scratch), database_url=f"sqlite:///{scratch}/openapi.db")
        return create_app(settings).openapi()


def render() -> str:
    """The document as YAML, keys in the order FastAPI emits them."""
    return yaml.safe_dump(document(), sort_keys=False, allow_unicode=True, width=100)


if __name__ == "__main__":
    sys.stdout.write(render())
