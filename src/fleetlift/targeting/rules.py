"""The target-condition language: Azure IoT Hub's syntax, parsed into an immutable tree.

    tags.env = 'prod' AND properties.reported.arch IN ['arm64', 'armv7']
    NOT (tags.ring >= 3 OR deviceId = 'gw-01') AND tags['site name'] != 'it''s'
    *

Syntax:
- ``*`` alone selects every device; it cannot be combined with anything.
- Operands are paths: ``deviceId``, ``tags.<key>...`` and ``properties.reported.<key>...``. A
  dotted key is a word ``[A-Za-z_$][A-Za-z0-9_$-]*`` (keywords included: ``tags.in`` is a key);
  any other key goes in brackets, ``tags['site name']``. A key may not contain ``"`` (SQLite's
  JSON paths cannot express it). Root names are case-sensitive, like JSON keys.
- Operators ``=``, ``!=`` (or ``<>``), ``<``, ``>``, ``<=``, ``>=``, ``IN [v, ...]``,
  ``NOT IN [v, ...]``, then ``NOT``, ``AND``, ``OR`` (tightest first) and parentheses. Keywords
  and ``true``/``false`` are case-insensitive.
- Values: ``'text'`` (``''`` is a quote), integers that fit in 64 bits, decimals with an optional
  exponent (``-3``, ``2.5``, ``1e3``: a number with a point or an exponent is a float), ``true``,
  ``false``. Ordering a boolean (``tags.on < true``) and an empty ``IN []`` are errors.
- A value on the left (``'prod' = tags.env``) is refused: conditions read path first, which keeps
  one canonical form.
- At most ``MAX_LENGTH`` characters (also once rendered canonically, so a stored canonical form
  always parses again) and ``MAX_DEPTH`` nested parentheses or NOTs, so hostile input stays cheap.

Semantics (``targeting.sql`` compiles to SQL that gives the same answers):
- Every JSON value has a kind: string, number or boolean for scalars (a boolean is never a
  number), none for null, objects and arrays.
- A comparison holds only when the path exists, its value has the literal's kind and the
  relation holds. Numbers compare numerically (``1 = 1.0``), strings by Unicode code point.
- ``a != v`` holds when the path exists and ``a = v`` does not: null, objects, arrays and values
  of another kind are "not equal"; a missing path is neither equal nor not equal.
  ``a NOT IN [...]`` likewise means "exists and not ``a IN [...]``".
- ``NOT c`` is plain negation: conditions are two-valued, never unknown, so
  ``NOT tags.x = 1`` matches devices without ``tags.x``.
- ``deviceId`` always exists and is a string.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

from fleetlift.errors import ConditionSyntaxError

MAX_LENGTH: Final = 4096
MAX_DEPTH: Final = 64
# SQLite binds integers as 64-bit; a larger literal could not reach the database.
INT_MIN: Final = -(2**63)
INT_MAX: Final = 2**63 - 1

Value = str | int | float | bool


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


ORDERING_OPS: Final = frozenset({Op.LT, Op.GT, Op.LE, Op.GE})


def value_kind(value: object) -> str | None:
    """The kind of a JSON value: 'boolean', 'number', 'string', or None (null, object, array)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return None


def _value_key(value: Value) -> tuple[str | None, Value]:
    # Python says 1 == True; trees must not, or `= 1` and `= true` would be the same condition.
    return (value_kind(value), value)


def _check_value(value: object) -> None:
    if isinstance(value, bool | str):
        return
    if isinstance(value, int):
        if not INT_MIN <= value <= INT_MAX:
            raise ValueError(f"integer {value} does not fit in 64 bits")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"number {value} is not finite")
        return
    raise ValueError(f"{value!r} is not a condition value (text, number or boolean)")


@dataclass(frozen=True)
class Path:
    """Where a comparison looks: ``deviceId``, or keys below ``tags`` or ``properties.reported``."""

    root: Root
    keys: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.root is Root.DEVICE_ID and self.keys:
            raise ValueError("deviceId has no keys")
        if self.root is not Root.DEVICE_ID and not self.keys:
            raise ValueError(f"{self.root.value} needs at least one key")
        if any('"' in key for key in self.keys):
            raise ValueError("a key cannot contain a double quote")


@dataclass(frozen=True)
class All:
    """``*``: every device. Only ever a whole condition."""


@dataclass(frozen=True, eq=False)
class Compare:
    """``path op value``."""

    path: Path
    op: Op
    value: Value

    def __post_init__(self) -> None:
        _check_value(self.value)
        if isinstance(self.value, bool) and self.op in ORDERING_OPS:
            raise ValueError(f"'{self.op.value}' cannot compare with a boolean")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Compare):
            return NotImplemented
        return (self.path, self.op, _value_key(self.value)) == (
            other.path,
            other.op,
            _value_key(other.value),
        )

    def __hash__(self) -> int:
        return hash((self.path, self.op, _value_key(self.value)))


@dataclass(frozen=True, eq=False)
class In:
    """``path IN [values]``, or ``path NOT IN [values]`` when negated."""

    path: Path
    values: tuple[Value, ...]
    negated: bool = False

    def __post_init__(self) -> None:
        if not self.values:
            raise ValueError("an IN list needs at least one value")
        for value in self.values:
            _check_value(value)

    def _key(self) -> tuple[Path, tuple[tuple[str | None, Value], ...], bool]:
        return (self.path, tuple(_value_key(v) for v in self.values), self.negated)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, In):
            return NotImplemented
        return self._key() == other._key()

    def __hash__(self) -> int:
        return hash(self._key())


def _refuse_all(*operands: object) -> None:
    if any(isinstance(operand, All) for operand in operands):
        raise ValueError("'*' (all devices) can only be a whole condition")


@dataclass(frozen=True)
class Not:
    operand: Condition

    def __post_init__(self) -> None:
        _refuse_all(self.operand)


@dataclass(frozen=True)
class And:
    left: Condition
    right: Condition

    def __post_init__(self) -> None:
        _refuse_all(self.left, self.right)


@dataclass(frozen=True)
class Or:
    left: Condition
    right: Condition

    def __post_init__(self) -> None:
        _refuse_all(self.left, self.right)


Condition = All | Compare | In | Not | And | Or


@dataclass(frozen=True)
class DeviceFacts:
    """What a condition can see of a device: its ID, tags and reported properties (JSON-like)."""

    device_id: str
    tags: Mapping[str, Any]
    reported: Mapping[str, Any]


def operands(condition: And | Or) -> list[Condition]:
    """The operands of a chain of the same connective, left to right (``a AND (b AND c)`` gives 3)."""
    # Iterative: a 4096-character chain of ORs is ~370 levels deep, too deep to recurse
    # comfortably inside a web request or SQLAlchemy's compiler.
    kind = type(condition)
    found: list[Condition] = []
    stack: list[Condition] = [condition]
    while stack:
        node = stack.pop()
        if isinstance(node, kind):
            assert isinstance(node, And | Or)
            stack.append(node.right)
            stack.append(node.left)
        else:
            found.append(node)
    return found


# --- tokens -------------------------------------------------------------------------------------

_SPACE = " \t\r\n\f\v"
_NUMBER = re.compile(r"-?[0-9]+(?:\.[0-9]+)?(?:[eE][+-]?[0-9]+)?")
_WORD = re.compile(r"[A-Za-z_$][A-Za-z0-9_$\-]*")
_OPERATORS = ("<=", ">=", "!=", "<>", "=", "<", ">")
_PUNCTUATION = "()[],.*"


@dataclass(frozen=True)
class _Token:
    kind: str  # word, string, number, op, punct, end
    text: str  # the source text (a string token includes its quotes)
    position: int
    end: int
    value: str = ""  # a string token's content, quotes undone


def _tokenize(text: str) -> list[_Token]:
    tokens: list[_Token] = []
    position = 0
    while position < len(text):
        char = text[position]
        if char in _SPACE:
            position += 1
            continue
        if char == "'":
            tokens.append(_string(text, position))
        elif (number := _NUMBER.match(text, position)) is not None:
            tokens.append(_Token("number", number.group(), position, number.end()))
        elif (word := _WORD.match(text, position)) is not None:
            tokens.append(_Token("word", word.group(), position, word.end()))
        elif operator := next((op for op in _OPERATORS if text.startswith(op, position)), None):
            tokens.append(_Token("op", operator, position, position + len(operator)))
        elif char in _PUNCTUATION:
            tokens.append(_Token("punct", char, position, position + 1))
        else:
            raise ConditionSyntaxError(f"unexpected character {char!r}", position=position, text=text)
        position = tokens[-1].end
    tokens.append(_Token("end", "", len(text), len(text)))
    return tokens


def _string(text: str, start: int) -> _Token:
    chars: list[str] = []
    position = start + 1
    while True:
        end = text.find("'", position)
        if end < 0:
            raise ConditionSyntaxError("unterminated string", position=start, text=text)
        chars.append(text[position:end])
        if text.startswith("''", end):
            chars.append("'")
            position = end + 2
            continue
        return _Token("string", text[start : end + 1], start, end + 1, "".join(chars))


def _describe(token: _Token) -> str:
    if token.kind == "string":
        shown = token.text if len(token.text) <= 24 else token.text[:20] + "...'"
        return f"the string {shown}"
    if token.kind == "number":
        return f"the number {token.text}"
    return f"'{token.text}'"


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

    def advance(self) -> _Token:
        token = self.current
        self.index += 1
        return token

    def fail(self, message: str, token: _Token | None = None) -> ConditionSyntaxError:
        return ConditionSyntaxError(message, position=(token or self.current).position, text=self.text)

    def expected(self, what: str) -> ConditionSyntaxError:
        if self.current.kind == "end":
            return self.fail(f"unexpected end of condition: expected {what}")
        return self.fail(f"expected {what}, found {_describe(self.current)}")

    def is_keyword(self, word: str) -> bool:
        return self.current.kind == "word" and self.current.text.lower() == word

    def is_punct(self, char: str) -> bool:
        return self.current.kind == "punct" and self.current.text == char

    def expect_punct(self, char: str, what: str) -> None:
        if not self.is_punct(char):
            raise self.expected(what)
        self.advance()

    def nest(self, token: _Token) -> None:
        self.depth += 1
        if self.depth > MAX_DEPTH:
            raise self.fail(f"the condition nests deeper than {MAX_DEPTH} levels", token)

    def parse(self) -> Condition:
        if self.current.kind == "end":
            raise self.fail("the condition is empty")
        if self.is_punct("*") and self.tokens[self.index + 1].kind == "end":
            return All()
        condition = self.parse_or()
        if self.is_punct(")"):
            raise self.fail("unbalanced ')': there is no '(' to close")
        if self.current.kind != "end":
            raise self.expected("AND, OR or the end of the condition")
        return condition

    def parse_or(self) -> Condition:
        condition = self.parse_and()
        while self.is_keyword("or"):
            self.advance()
            condition = Or(condition, self.parse_and())
        return condition

    def parse_and(self) -> Condition:
        condition = self.parse_not()
        while self.is_keyword("and"):
            self.advance()
            condition = And(condition, self.parse_not())
        return condition

    def parse_not(self) -> Condition:
        if not self.is_keyword("not"):
            return self.parse_primary()
        self.nest(self.advance())
        operand = self.parse_not()
        self.depth -= 1
        return Not(operand)

    def parse_primary(self) -> Condition:
        token = self.current
        if self.is_punct("("):
            self.nest(self.advance())
            condition = self.parse_or()
            self.expect_punct(")", f"')' to close the '(' at position {token.position}")
            self.depth -= 1
            return condition
        if self.is_punct("*"):
            raise self.fail("'*' (all devices) must be the whole condition")
        if token.kind in ("string", "number") or self.is_keyword("true") or self.is_keyword("false"):
            raise self.fail("a comparison starts with a property path such as tags.env, not with a value")
        return self.parse_comparison()

    def parse_path(self) -> Path:
        start = self.current
        if start.kind != "word" or start.text.lower() in ("and", "or", "in"):
            raise self.expected("a comparison such as tags.env = 'prod'")
        self.advance()
        if start.text == Root.DEVICE_ID:
            return Path(Root.DEVICE_ID)
        if start.text == "tags":
            root = Root.TAGS
        elif start.text == "properties":
            self.expect_punct(".", "'.reported' after 'properties'")
            if not (self.current.kind == "word" and self.current.text == "reported"):
                if self.current.kind == "end":
                    raise self.expected("'reported' after 'properties.'")
                raise self.fail("only properties.reported can be used in a condition")
            self.advance()
            root = Root.REPORTED
        else:
            raise self.fail(
                f"unknown property '{start.text}': use deviceId, tags.<key> or properties.reported.<key>",
                start,
            )
        keys: list[str] = []
        while self.is_punct(".") or self.is_punct("["):
            if self.advance().text == ".":
                if self.current.kind != "word":
                    raise self.expected("a key name after '.' (other keys go in brackets: tags['0'])")
                key_token = self.advance()
                keys.append(key_token.text)
            else:
                key_token = self.current
                if key_token.kind != "string":
                    raise self.expected("a quoted key inside [...]")
                self.advance()
                keys.append(key_token.value)
                self.expect_punct("]", "']' after the key")
            if '"' in keys[-1]:
                raise self.fail("a key cannot contain a double quote", key_token)
        if not keys:
            raise self.expected(f"'.' and a key after '{root.value}'")
        return Path(root, tuple(keys))

    def parse_value(self) -> Value:
        token = self.current
        if token.kind == "string":
            self.advance()
            return token.value
        if token.kind == "number":
            self.advance()
            if re.fullmatch(r"-?[0-9]+", token.text):
                integer = int(token.text)
                if not INT_MIN <= integer <= INT_MAX:
                    raise self.fail("the integer does not fit in 64 bits", token)
                return integer
            number = float(token.text)
            if not math.isfinite(number):
                raise self.fail("the number is too large", token)
            return number
        if self.is_keyword("true") or self.is_keyword("false"):
            self.advance()
            return token.text.lower() == "true"
        raise self.expected("a value ('text', a number, true or false)")

    def parse_comparison(self) -> Condition:
        start = self.current.position
        path = self.parse_path()
        shown = self.text[start : self.tokens[self.index - 1].end]
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        negated = False
        if self.is_keyword("not"):
            self.advance()
            if not self.is_keyword("in"):
                raise self.expected("IN after NOT")
            negated = True
        if self.is_keyword("in"):
            self.advance()
            self.expect_punct("[", "'[' to open the IN list")
            if self.is_punct("]"):
                raise self.fail("an IN list needs at least one value")
            values = [self.parse_value()]
            while self.is_punct(","):
                self.advance()
                values.append(self.parse_value())
            self.expect_punct("]", "',' or ']' in the IN list")
            return In(path, tuple(values), negated)
        if self.current.kind != "op":
            raise self.expected(f"a comparison operator after '{shown}'")
        operator = self.advance()
        op = Op.NE if operator.text == "<>" else Op(operator.text)
        value_token = self.current
        value = self.parse_value()
        if isinstance(value, bool) and op in ORDERING_OPS:
            raise self.fail(f"'{operator.text}' cannot compare with a boolean; use = or !=", value_token)
        return Compare(path, op, value)


def parse_condition(text: str) -> Condition:
    """Parse a target condition; a syntax error raises ``ConditionSyntaxError`` with its position."""
    if len(text) > MAX_LENGTH:
        raise ConditionSyntaxError(
            f"the condition is longer than {MAX_LENGTH} characters", position=MAX_LENGTH, text=text
        )
    if "\x00" in text:
        # PostgreSQL cannot store or bind NUL in text; refuse it here with a position.
        raise ConditionSyntaxError("unexpected NUL character", position=text.index("\x00"), text=text)
    condition = _Parser(text).parse()
    if len(render(condition)) > MAX_LENGTH:
        # The canonical form spells numbers and spaces out; it must stay parseable once stored.
        raise ConditionSyntaxError(
            f"the condition is longer than {MAX_LENGTH} characters once written canonically",
            position=0,
            text=text,
        )
    return condition


# --- evaluation ---------------------------------------------------------------------------------

_MISSING: Final = object()


def _lookup(path: Path, device: DeviceFacts) -> object:
    if path.root is Root.DEVICE_ID:
        return device.device_id
    value: object = device.tags if path.root is Root.TAGS else device.reported
    for key in path.keys:
        if not isinstance(value, Mapping) or key not in value:
            return _MISSING
        value = value[key]
    return value


def _equal(actual: object, value: Value) -> bool:
    kind = value_kind(actual)
    return kind is not None and kind == value_kind(value) and actual == value


def _ordered(actual: object, op: Op, value: Value) -> bool:
    if value_kind(actual) != value_kind(value):
        return False
    # Same kind and never boolean (Compare refuses it): two numbers or two strings.
    left: Any = actual
    if op is Op.LT:
        return bool(left < value)
    if op is Op.GT:
        return bool(left > value)
    if op is Op.LE:
        return bool(left <= value)
    return bool(left >= value)


def evaluate(condition: Condition, device: DeviceFacts) -> bool:
    """Whether ``device`` matches ``condition``."""
    if isinstance(condition, All):
        return True
    if isinstance(condition, Compare):
        actual = _lookup(condition.path, device)
        if actual is _MISSING:
            return False
        if condition.op is Op.EQ:
            return _equal(actual, condition.value)
        if condition.op is Op.NE:
            return not _equal(actual, condition.value)
        return _ordered(actual, condition.op, condition.value)
    if isinstance(condition, In):
        actual = _lookup(condition.path, device)
        if actual is _MISSING:
            return False
        return condition.negated != any(_equal(actual, value) for value in condition.values)
    if isinstance(condition, Not):
        return not evaluate(condition.operand, device)
    if isinstance(condition, And):
        return all(evaluate(operand, device) for operand in operands(condition))
    return any(evaluate(operand, device) for operand in operands(condition))


# --- rendering ----------------------------------------------------------------------------------

_PLAIN_KEY = re.compile(r"[A-Za-z_$][A-Za-z0-9_$\-]*")


def quote(text: str) -> str:
    """``text`` as a condition string literal: ``it's`` becomes ``'it''s'``."""
    return "'" + text.replace("'", "''") + "'"


def render_path(path: Path) -> str:
    """The canonical text of a path: dotted keys where they are words, brackets otherwise."""
    parts = [path.root.value]
    parts += [f".{key}" if _PLAIN_KEY.fullmatch(key) else f"[{quote(key)}]" for key in path.keys]
    return "".join(parts)


def render_value(value: Value) -> str:
    """The canonical text of a value; a float always shows a point or an exponent."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return quote(value)
    return repr(value)


def render(condition: Condition) -> str:
    """The canonical text of a condition; parsing it gives an equal tree back."""
    if isinstance(condition, All):
        return "*"
    if isinstance(condition, Compare):
        return f"{render_path(condition.path)} {condition.op.value} {render_value(condition.value)}"
    if isinstance(condition, In):
        values = ", ".join(render_value(value) for value in condition.values)
        return f"{render_path(condition.path)} {'NOT IN' if condition.negated else 'IN'} [{values}]"
    if isinstance(condition, Not):
        operand = render(condition.operand)
        return f"NOT ({operand})" if isinstance(condition.operand, And | Or) else f"NOT {operand}"
    return " AND ".join(_chain(condition)) if isinstance(condition, And) else " OR ".join(_chain(condition))


def _chain(condition: And | Or) -> Iterator[str]:
    # AND and OR associate to the left, so only the left spine goes without parentheses; a
    # right operand of the same connective keeps them, and the tree survives the round trip.
    rights: list[Condition] = []
    node: Condition = condition
    while isinstance(node, type(condition)):
        assert isinstance(node, And | Or)
        rights.append(node.right)
        node = node.left
    needs_parens: tuple[type, ...] = (Or,) if isinstance(condition, And) else ()
    yield f"({render(node)})" if isinstance(node, needs_parens) else render(node)
    for right in reversed(rights):
        yield f"({render(right)})" if isinstance(right, (*needs_parens, type(condition))) else render(right)


render_condition = render  # the name the deployment service imports
