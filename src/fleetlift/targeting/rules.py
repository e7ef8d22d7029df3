"""The target-condition language: Azure IoT Hub's syntax, parsed into an immutable tree.

    tags.env = 'prod' AND properties.reported.arch IN ['arm64', 'armv7']
    NOT (tags.ring >= 3 OR deviceId = 'gw-01') AND tags['site name'] != 'it''s'
    *

Operands are paths (``deviceId``, ``tags.<key>...``, ``properties.reported.<key>...``, keys also
as ``['any key']``) compared with literals (single-quoted strings with ``''`` for a quote,
numbers, ``true``/``false``). Keywords are case-insensitive; NOT binds tighter than AND, AND
tighter than OR. A literal on the left of a comparison is refused: conditions read path first.

Semantics (``condition_to_sql`` in ``targeting.sql`` gives the same answers):
- A comparison holds only when the path exists and holds a JSON value of the literal's type
  (string, number, boolean; a boolean is never a number) and the relation holds. Numbers compare
  numerically, strings by Unicode code point.
- ``a != lit`` holds when the path exists and ``a = lit`` does not (a path holding another type,
  null, an object or an array is "not equal"); ``NOT IN`` likewise.
- ``NOT`` is plain negation: conditions are two-valued, never unknown.
- ``deviceId`` always exists and is a string.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Any

from fleetlift.errors import ConditionSyntaxError

MAX_LENGTH = 4096
MAX_DEPTH = 64

Literal = str | int | float | bool


class Root(StrEnum):
    DEVICE_ID = "deviceId"
    TAGS = "tags"
    REPORTED = "properties.reported"


class Op(StrEnum):
    EQ = "="
    NE = "!="
    LT = "<"
    GT = ">"
    LE = "<="
    GE = ">="


@dataclass(frozen=True)
class Path:
    root: Root
    keys: tuple[str, ...] = ()


@dataclass(frozen=True)
class All:
    """``*``: every device."""


@dataclass(frozen=True)
class Compare:
    path: Path
    op: Op
    value: Literal


@dataclass(frozen=True)
class In:
    path: Path
    values: tuple[Literal, ...]
    negated: bool = False


@dataclass(frozen=True)
class Not:
    operand: Condition


@dataclass(frozen=True)
class And:
    left: Condition
    right: Condition


@dataclass(frozen=True)
class Or:
    left: Condition
    right: Condition


Condition = All | Compare | In | Not | And | Or


@dataclass(frozen=True)
class DeviceFacts:
    """What a condition can see of a device."""

    device_id: str
    tags: Mapping[str, Any]
    reported: Mapping[str, Any]


# --- tokens -------------------------------------------------------------------------------------

_TOKEN = re.compile(
    r"""
    (?P<space>\s+)
  | (?P<number>-?(?:\d+\.\d*|\.\d+|\d+)(?:[eE][+-]?\d+)?)
  | (?P<string>')
  | (?P<op><=|>=|!=|<>|=|<|>)
  | (?P<punct>[()\[\],.*])
  | (?P<word>[A-Za-z_$][A-Za-z0-9_\-$]*)
    """,
    re.VERBOSE,
)
_KEYWORDS = {"and", "or", "not", "in", "true", "false"}


@dataclass(frozen=True)
class _Token:
    kind: str  # number, string, op, punct, word, keyword, end
    text: str
    position: int
    value: Any = None


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        if text[position] == "'":
            end = position + 1
            chars: list[str] = []
            while True:
                if end >= len(text):
                    raise ConditionSyntaxError("unterminated string", position=position, text=text)
                if text[end] == "'":
                    if end + 1 < len(text) and text[end + 1] == "'":
                        chars.append("'")
                        end += 2
                        continue
                    break
                chars.append(text[end])
                end += 1
            tokens.append(_Token("string", text[position : end + 1], position, "".join(chars)))
            position = end + 1
            continue
        match = _TOKEN.match(text, position)
        if match is None:
            raise ConditionSyntaxError(
                f"unexpected character {text[position]!r}", position=position, text=text
            )
        kind = match.lastgroup or ""
        lexeme = match.group()
        if kind == "word" and lexeme.lower() in _KEYWORDS:
            kind = "keyword"
        if kind != "space":
            tokens.append(_Token(kind, lexeme, position))
        position = match.end()
    tokens.append(_Token("end", "", len(text)))
    return tokens


# --- parser -------------------------------------------------------------------------------------


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = _tokenize(text)
        self.index = 0
        self.depth = 0

    @property
    def current(self) -> _Token:
        return self.tokens[self.index]

    def fail(self, message: str, token: _Token | None = None) -> ConditionSyntaxError:
        return ConditionSyntaxError(message, position=(token or self.current).position, text=self.text)

    def advance(self) -> _Token:
        token = self.current
        self.index += 1
        return token

    def is_keyword(self, word: str) -> bool:
        return self.current.kind == "keyword" and self.current.text.lower() == word

    def is_punct(self, char: str) -> bool:
        return self.current.kind == "punct" and self.current.text == char

    def expect_punct(self, char: str, what: str) -> None:
        if not self.is_punct(char):
            raise self.fail(f"expected {what}{self._found()}")
        self.advance()

    def _found(self) -> str:
        if self.current.kind == "end":
            return " but the condition ended"
        return f" but found '{self.current.text}'"

    def parse(self) -> Condition:
        if self.current.kind == "end":
            raise self.fail("the condition is empty")
        if self.is_punct("*") and self.tokens[1].kind == "end":
            return All()
        condition = self.parse_or()
        if self.current.kind != "end":
            raise self.fail(f"expected AND, OR or the end of the condition{self._found()}")
        return condition

    def enter(self) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"the condition nests deeper than {MAX_DEPTH} levels")

    def parse_or(self) -> Condition:
        self.enter()
        condition = self.parse_and()
        while self.is_keyword("or"):
            self.advance()
            condition = Or(condition, self.parse_and())
        self.depth -= 1
        return condition

    def parse_and(self) -> Condition:
        condition = self.parse_not()
        while self.is_keyword("and"):
            self.advance()
            condition = And(condition, self.parse_not())
        return condition

    def parse_not(self) -> Condition:
        if self.is_keyword("not"):
            self.advance()
            self.enter()
            operand = self.parse_not()
            self.depth -= 1
            return Not(operand)
        return self.parse_primary()

    def parse_primary(self) -> Condition:
        if self.is_punct("("):
            self.advance()
            condition = self.parse_or()
            self.expect_punct(")", "')'")
            return condition
        if self.current.kind in ("string", "number") or self.is_keyword("true") or self.is_keyword("false"):
            raise self.fail("a comparison starts with a property path such as tags.env, not a value")
        if self.current.kind == "end":
            raise self.fail("unexpected end of condition; expected a comparison")
        return self.parse_comparison()

    def parse_path(self) -> Path:
        start = self.current
        if start.kind != "word":
            raise self.fail(
                f"expected a property path (deviceId, tags..., properties.reported...){self._found()}"
            )
        self.advance()
        if start.text == "deviceId":
            return Path(Root.DEVICE_ID)
        if start.text == "tags":
            root = Root.TAGS
        elif start.text == "properties":
            self.expect_punct(".", "'.reported' after 'properties'")
            word = self.current
            if word.kind != "word" or word.text != "reported":
                raise self.fail("only properties.reported can be used in a condition", word)
            self.advance()
            root = Root.REPORTED
        else:
            raise self.fail(
                f"unknown property '{start.text}'; use deviceId, tags.<key> or properties.reported.<key>",
                start,
            )
        keys: list[str] = []
        while self.is_punct(".") or self.is_punct("["):
            if self.advance().text == ".":
                key = self.current
                if key.kind not in ("word", "keyword"):
                    raise self.fail(f"expected a key name after '.'{self._found()}")
                keys.append(self.advance().text)
            else:
                key = self.current
                if key.kind != "string":
                    raise self.fail(f"expected a quoted key inside [...]{self._found()}")
                keys.append(str(self.advance().value))
                self.expect_punct("]", "']'")
            if '"' in keys[-1] or "\\" in keys[-1] or not keys[-1]:
                raise self.fail("a key cannot be empty or contain a double quote or a backslash", key)
        if not keys:
            raise self.fail(f"'{root.value}' needs a key, such as {root.value}.name", start)
        return Path(root, tuple(keys))

    def parse_literal(self) -> Literal:
        token = self.current
        if token.kind == "string":
            self.advance()
            return str(token.value)
        if token.kind == "number":
            self.advance()
            if re.fullmatch(r"-?\d+", token.text):
                return int(token.text)
            number = float(Decimal(token.text))
            if number != number or number in (float("inf"), float("-inf")):
                raise self.fail("the number is out of range", token)
            return number
        if self.is_keyword("true") or self.is_keyword("false"):
            self.advance()
            return token.text.lower() == "true"
        raise self.fail(f"expected a value ('text', a number, true or false){self._found()}")

    def parse_comparison(self) -> Condition:
        path = self.parse_path()
        negated = False
        if self.is_keyword("not"):
            self.advance()
            if not self.is_keyword("in"):
                raise self.fail(f"expected IN after NOT{self._found()}")
            negated = True
        if self.is_keyword("in"):
            self.advance()
            self.expect_punct("[", "'[' to open the IN list")
            if self.is_punct("]"):
                raise self.fail("an IN list needs at least one value")
            values = [self.parse_literal()]
            while self.is_punct(","):
                self.advance()
                values.append(self.parse_literal())
            self.expect_punct("]", "',' or ']' in the IN list")
            return In(path, tuple(values), negated)
        if self.current.kind != "op":
            raise self.fail(f"expected a comparison operator after the property{self._found()}")
        op_token = self.advance()
        op = Op.NE if op_token.text == "<>" else Op(op_token.text)
        value_token = self.current
        value = self.parse_literal()
        if isinstance(value, bool) and op not in (Op.EQ, Op.NE):
            raise self.fail(f"'{op.value}' cannot compare with a boolean", value_token)
        return Compare(path, op, value)


def parse_condition(text: str) -> Condition:
    """Parse a target condition; a syntax error raises ``ConditionSyntaxError`` with its position."""
    if len(text) > MAX_LENGTH:
        raise ConditionSyntaxError(
            f"the condition is longer than {MAX_LENGTH} characters", position=MAX_LENGTH, text=text[:100]
        )
    return _Parser(text).parse()


# --- evaluation ---------------------------------------------------------------------------------

_MISSING = object()


def _lookup(path: Path, device: DeviceFacts) -> Any:
    if path.root is Root.DEVICE_ID:
        return device.device_id
    value: Any = device.tags if path.root is Root.TAGS else device.reported
    for key in path.keys:
        if not isinstance(value, Mapping) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _kind(value: Any) -> str | None:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _equal(actual: Any, literal: Literal) -> bool:
    return _kind(actual) is not None and _kind(actual) == _kind(literal) and actual == literal


def _compare(actual: Any, op: Op, literal: Literal) -> bool:
    if actual is _MISSING:
        return False
    if op is Op.EQ:
        return _equal(actual, literal)
    if op is Op.NE:
        return not _equal(actual, literal)
    if _kind(actual) != _kind(literal) or _kind(literal) not in ("number", "string"):
        return False
    if op is Op.LT:
        return bool(actual < literal)
    if op is Op.GT:
        return bool(actual > literal)
    if op is Op.LE:
        return bool(actual <= literal)
    return bool(actual >= literal)


def evaluate(condition: Condition, device: DeviceFacts) -> bool:
    """Whether a device matches a condition."""
    if isinstance(condition, All):
        return True
    if isinstance(condition, Compare):
        return _compare(_lookup(condition.path, device), condition.op, condition.value)
    if isinstance(condition, In):
        actual = _lookup(condition.path, device)
        if actual is _MISSING:
            return False
        member = any(_equal(actual, value) for value in condition.values)
        return not member if condition.negated else member
    if isinstance(condition, Not):
        return not evaluate(condition.operand, device)
    if isinstance(condition, And):
        return evaluate(condition.left, device) and evaluate(condition.right, device)
    return evaluate(condition.left, device) or evaluate(condition.right, device)


# --- rendering ----------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"^[A-Za-z_$][A-Za-z0-9_\-$]*$")


def _quote(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _render_path(path: Path) -> str:
    parts = [path.root.value]
    for key in path.keys:
        parts.append(
            f".{key}" if _PLAIN_KEY.match(key) and key.lower() not in _KEYWORDS else f"[{_quote(key)}]"
        )
    return "".join(parts)


def _render_literal(value: Literal) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return _quote(value)
    return repr(value)


def render_condition(condition: Condition) -> str:
    """The canonical text of a condition; parsing it gives the same tree back."""
    if isinstance(condition, All):
        return "*"
    if isinstance(condition, Compare):
        return f"{_render_path(condition.path)} {condition.op.value} {_render_literal(condition.value)}"
    if isinstance(condition, In):
        values = ", ".join(_render_literal(v) for v in condition.values)
        return f"{_render_path(condition.path)} {'NOT IN' if condition.negated else 'IN'} [{values}]"
    if isinstance(condition, Not):
        return f"NOT {_render_operand(condition.operand)}"
    if isinstance(condition, And):
        return f"{_render_and_operand(condition.left)} AND {_render_and_operand(condition.right, right=True)}"
    return f"{render_condition(condition.left)} OR {_render_or_right(condition.right)}"


def _render_operand(condition: Condition) -> str:
    text = render_condition(condition)
    return text if isinstance(condition, Compare | In | Not | All) else f"({text})"


def _render_and_operand(condition: Condition, right: bool = False) -> str:
    text = render_condition(condition)
    if isinstance(condition, Or) or (right and isinstance(condition, And)) or isinstance(condition, All):
        return f"({text})"
    return text


def _render_or_right(condition: Condition) -> str:
    text = render_condition(condition)
    return f"({text})" if isinstance(condition, Or | All) else text
