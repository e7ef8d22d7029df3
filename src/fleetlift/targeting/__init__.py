"""Target conditions in Azure IoT Hub's syntax: parse, evaluate, render, and compile to SQL."""

from fleetlift.targeting.rules import (
    All,
    And,
    Compare,
    Condition,
    DeviceFacts,
    In,
    Not,
    Op,
    Or,
    Path,
    Root,
    Value,
    evaluate,
    parse_condition,
    render,
    render_condition,
)
from fleetlift.targeting.sql import condition_to_sql

__all__ = [
    "All",
    "And",
    "Compare",
    "Condition",
    "DeviceFacts",
    "In",
    "Not",
    "Op",
    "Or",
    "Path",
    "Root",
    "Value",
    "condition_to_sql",
    "evaluate",
    "parse_condition",
    "render",
    "render_condition",
]
