# Copyright: bakery contributors
# GNU General Public License v3.0+ (see LICENSE or https://www.gnu.org/licenses/gpl-3.0.txt)
"""Packer's HCL2 templates: blocks read with python-hcl2, expressions evaluated here.

python-hcl2 (a maintained HCL2 parser) checks the syntax, gives the blocks in their order and each attribute's
expression as HCL source text (``"${var.x}"``, ``"\\"web-${local.v}\\""``). It evaluates nothing: Packer's
expression language (variables, locals, function calls, templates) is Go code in Packer and in HashiCorp's
hcl library, with no Python port. So the subset Packer evaluates before a build is evaluated by the small
parser below, written for the importer: literals, templates with interpolations, ``var.``/``local.``/
``path.``/``source.`` references, attribute and index access, operators, conditionals, tuples, objects,
``for`` expressions and the common functions. A value only a build knows (``build.ID``, ``packer.version``)
or a construct outside the subset evaluates to :class:`Unknown`, which the importer reports instead of
guessing it.
"""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os
import re
import uuid
from collections.abc import Mapping
from typing import Any, Callable

from ansible_collections.bakery.images.plugins.module_utils._steps import BakeryError

try:
    from hcl2.query import DocumentView
    from lark.exceptions import UnexpectedInput

    HAS_HCL2 = True
except ImportError:  # pragma: no cover - the module reports missing_required_lib
    HAS_HCL2 = False

    class UnexpectedInput(Exception):  # type: ignore[no-redef]
        """Stands in when lark is missing."""


class Unknown:
    """A value Packer knows only during a build (or one the importer cannot evaluate): *text* says what it
    is, *why* why it is not known now."""

    def __init__(self, text: str, why: str) -> None:
        self.text = text
        self.why = why

    def __repr__(self) -> str:
        return "Unknown(%r)" % self.text

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Unknown) and other.text == self.text

    def __hash__(self) -> int:
        return hash(self.text)


class DataRef:
    """A reference to an attribute of a data source (``data.amazon-ami.base.id``), resolved by the mapper."""

    def __init__(self, kind: str, name: str, attribute: str) -> None:
        self.kind, self.name, self.attribute = kind, name, attribute

    def __repr__(self) -> str:
        return "data.%s.%s.%s" % (self.kind, self.name, self.attribute)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DataRef) and repr(other) == repr(self)

    def __hash__(self) -> int:
        return hash(repr(self))


class EvalError(Exception):
    """A dynamic error (a missing attribute, a bad argument): what ``try()`` catches."""


class Undefined(BakeryError):
    """A reference to a variable or local that the template does not declare, or that has no value."""


class Block:
    """One HCL block: its type, labels, attributes (name -> expression source, in order) and blocks."""

    def __init__(self, kind: str, labels: list[str], attrs: dict[str, Any], blocks: list[Block], file: str):
        self.kind, self.labels, self.attrs, self.blocks, self.file = kind, labels, attrs, blocks, file

    def __repr__(self) -> str:
        return "Block(%s %s)" % (self.kind, " ".join(self.labels))

    def address(self) -> str:
        return " ".join([self.kind] + ['"%s"' % label for label in self.labels])


def _label(text: str) -> str:
    return text[1:-1] if len(text) >= 2 and text[0] == '"' and text[-1] == '"' else text


def _to_block(view: Any, file: str) -> Block:
    labels = [_label(label) for label in view.labels[1:]]
    attrs: dict[str, Any] = {}
    for attribute in view.body.attributes():
        attrs.update(attribute.to_dict())
    blocks = [_to_block(child, file) for child in view.body.blocks()]
    return Block(view.block_type, labels, attrs, blocks, file)


def parse_file(path: str) -> Block:
    """A file's top-level body as a block of type ``file``; a syntax error names the file, line and column."""
    with open(path, encoding="utf-8") as handle:
        text = handle.read()
    return parse_text(text, path)


def parse_text(text: str, path: str) -> Block:
    if not HAS_HCL2:
        raise BakeryError(
            "reading HCL2 templates needs the Python package python-hcl2 (pip install python-hcl2)"
        )
    if not text.endswith("\n"):
        text += "\n"
    try:
        document = DocumentView.parse(text)
        body = document.body
        attrs: dict[str, Any] = {}
        for attribute in body.attributes():
            attrs.update(attribute.to_dict())
        blocks = [_to_block(view, path) for view in body.blocks()]
    except UnexpectedInput as exc:
        line, column = getattr(exc, "line", "?"), getattr(exc, "column", "?")
        context = ""
        try:
            context = exc.get_context(text, span=30).strip().splitlines()[0]
        except Exception:  # noqa: BLE001 - the context is a courtesy
            context = ""
        raise BakeryError(
            "%s:%s:%s: HCL syntax error%s" % (path, line, column, ": near %r" % context if context else "")
        ) from None
    except Exception as exc:  # noqa: BLE001 - python-hcl2 raises plain exceptions for some malformed input
        raise BakeryError("%s: HCL syntax error: %s" % (path, exc)) from None
    return Block("file", [], attrs, blocks, path)


# ---------------------------------------------------------------- expressions: parsing

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
_NUMBER = re.compile(r"[0-9]+(\.[0-9]+)?([eE][+-]?[0-9]+)?")
_OPERATORS = ("==", "!=", "<=", ">=", "&&", "||", "<", ">", "+", "-", "*", "/", "%")
_PRECEDENCE = {"||": 1, "&&": 2, "==": 3, "!=": 3, "<": 4, ">": 4, "<=": 4, ">=": 4, "+": 5, "-": 5}
_PRECEDENCE.update({"*": 6, "/": 6, "%": 6})
_ESCAPES = {"n": "\n", "r": "\r", "t": "\t", '"': '"', "\\": "\\"}


class _Parser:
    """A recursive-descent parser of one HCL expression; the result is a tree of tuples."""

    def __init__(self, text: str) -> None:
        self.text = text
        self.pos = 0

    def fail(self, what: str) -> EvalError:
        return EvalError("%s at %r" % (what, self.text[self.pos : self.pos + 20] or "the end"))

    def space(self) -> None:
        while self.pos < len(self.text):
            char = self.text[self.pos]
            if char in " \t\r\n":
                self.pos += 1
            elif self.text.startswith("#", self.pos) or self.text.startswith("//", self.pos):
                end = self.text.find("\n", self.pos)
                self.pos = len(self.text) if end < 0 else end
            elif self.text.startswith("/*", self.pos):
                end = self.text.find("*/", self.pos)
                self.pos = len(self.text) if end < 0 else end + 2
            else:
                break

    def peek(self, token: str) -> bool:
        self.space()
        return self.text.startswith(token, self.pos)

    def take(self, token: str) -> bool:
        if self.peek(token):
            self.pos += len(token)
            return True
        return False

    def expect(self, token: str) -> None:
        if not self.take(token):
            raise self.fail("expected %r" % token)

    def word(self) -> str | None:
        self.space()
        match = _IDENT.match(self.text, self.pos)
        if not match:
            return None
        return match.group(0)

    def whole(self) -> tuple:
        node = self.expression()
        self.space()
        if self.pos != len(self.text):
            raise self.fail("unexpected text")
        return node

    def expression(self) -> tuple:
        condition = self.binary(1)
        if self.take("?"):
            yes = self.expression()
            self.expect(":")
            no = self.expression()
            return ("cond", condition, yes, no)
        return condition

    def binary(self, level: int) -> tuple:
        left = self.unary()
        while True:
            self.space()
            operator = next((op for op in _OPERATORS if self.text.startswith(op, self.pos)), None)
            if operator is None or _PRECEDENCE[operator] < level:
                return left
            # "=>" and "==" share a first character with "="; only the listed operators are taken
            self.pos += len(operator)
            right = self.binary(_PRECEDENCE[operator] + 1)
            left = ("op", operator, left, right)

    def unary(self) -> tuple:
        if self.take("!"):
            return ("not", self.unary())
        if self.peek("-") and not _NUMBER.match(self.text, self.pos + 1):
            self.pos += 1
            return ("neg", self.unary())
        return self.postfix(self.primary())

    def postfix(self, node: tuple) -> tuple:
        while True:
            if self.peek(".*") or self.peek("[*]"):
                raise self.fail("splat expressions are not supported")
            if self.peek(".") and not self.peek(".."):
                self.pos += 1
                self.space()
                number = re.compile(r"[0-9]+").match(self.text, self.pos)
                if number:
                    self.pos = number.end()
                    node = ("index", node, ("lit", int(number.group(0))))
                    continue
                name = self.word()
                if name is None:
                    raise self.fail("expected an attribute name")
                self.pos += len(name)
                node = ("attr", node, name)
            elif self.peek("["):
                self.pos += 1
                key = self.expression()
                self.expect("]")
                node = ("index", node, key)
            else:
                return node

    def primary(self) -> tuple:
        self.space()
        if self.pos >= len(self.text):
            raise self.fail("expected a value")
        char = self.text[self.pos]
        if char == '"':
            self.pos += 1
            return self.template('"')
        if self.text.startswith("<<", self.pos):
            return self.heredoc()
        if char == "(":
            self.pos += 1
            inner = self.expression()
            self.expect(")")
            return inner
        if char == "[":
            self.pos += 1
            return self.tuple_()
        if char == "{":
            self.pos += 1
            return self.object_()
        if char == "-" or char.isdigit():
            match = re.compile(r"-?" + _NUMBER.pattern).match(self.text, self.pos)
            if match:
                self.pos = match.end()
                text = match.group(0)
                return ("lit", float(text) if any(c in text for c in ".eE") else int(text))
        name = self.word()
        if name is None:
            raise self.fail("unexpected character")
        self.pos += len(name)
        if name in ("true", "false"):
            return ("lit", name == "true")
        if name == "null":
            return ("lit", None)
        if self.peek("("):
            self.pos += 1
            args: list[tuple] = []
            expand = False
            while not self.take(")"):
                args.append(self.expression())
                if self.take("..."):
                    expand = True
                if not self.take(","):
                    self.expect(")")
                    break
            return ("call", name, args, expand)
        return ("ref", name)

    def tuple_(self) -> tuple:
        if self.word() == "for":
            return self.for_("]")
        items = []
        while not self.take("]"):
            items.append(self.expression())
            if not self.take(","):
                self.expect("]")
                break
        return ("tuple", items)

    def object_(self) -> tuple:
        if self.word() == "for":
            return self.for_("}")
        items = []
        while not self.take("}"):
            self.space()
            name = self.word()
            if name is not None and re.compile(r"\s*(=(?!=)|:)").match(self.text, self.pos + len(name)):
                self.pos += len(name)
                key: tuple = ("lit", name)
            else:
                key = self.expression()
            if not (self.take("=") or self.take(":")):
                raise self.fail("expected '=' or ':' in an object")
            items.append((key, self.expression()))
            self.take(",")
        return ("object", items)

    def for_(self, close: str) -> tuple:
        self.pos += 3
        first = self.word()
        if first is None:
            raise self.fail("expected a name after for")
        self.pos += len(first)
        second = None
        if self.take(","):
            second = self.word()
            if second is None:
                raise self.fail("expected a second name after for")
            self.pos += len(second)
        if self.word() != "in":
            raise self.fail("expected 'in'")
        self.pos += 2
        collection = self.expression()
        self.expect(":")
        key = None
        value = self.expression()
        if close == "}":
            self.expect("=>")
            key, value = value, self.expression()
            self.take("...")
        condition = None
        if self.word() == "if":
            self.pos += 2
            condition = self.expression()
        self.expect(close)
        names = (first, second) if second else (None, first)
        return ("for", close, names, collection, key, value, condition)

    def template(self, close: str | None) -> tuple:
        """A quoted template (up to *close*) or a heredoc's text (*close* None: to the end)."""
        parts: list[Any] = []
        literal: list[str] = []
        while True:
            if self.pos >= len(self.text):
                if close is None:
                    break
                raise self.fail("unterminated string")
            char = self.text[self.pos]
            if close is not None and char == close:
                self.pos += 1
                break
            if char == "\\" and close is not None:
                following = self.text[self.pos + 1 : self.pos + 2]
                if following in _ESCAPES:
                    literal.append(_ESCAPES[following])
                    self.pos += 2
                    continue
                if following in ("u", "U"):
                    size = 4 if following == "u" else 8
                    literal.append(chr(int(self.text[self.pos + 2 : self.pos + 2 + size], 16)))
                    self.pos += 2 + size
                    continue
                raise self.fail("unknown escape")
            if self.text.startswith("$${", self.pos) or self.text.startswith("%%{", self.pos):
                literal.append(self.text[self.pos + 1 : self.pos + 3])
                self.pos += 3
                continue
            if self.text.startswith("${", self.pos):
                if literal:
                    parts.append("".join(literal))
                    literal = []
                self.pos += 2
                self.take("~")
                parts.append(self.expression())
                self.take("~")
                self.expect("}")
                continue
            if self.text.startswith("%{", self.pos):
                raise self.fail("template directives (%{ if }, %{ for }) are not supported")
            literal.append(char)
            self.pos += 1
        if literal:
            parts.append("".join(literal))
        return ("template", parts)

    def heredoc(self) -> tuple:
        match = re.compile(r"<<(-?)([A-Za-z_][A-Za-z0-9_]*)\n").match(self.text, self.pos)
        if not match:
            raise self.fail("malformed heredoc")
        strip, marker = match.group(1), match.group(2)
        end = re.compile(r"^[ \t]*%s[ \t]*$" % re.escape(marker), re.M).search(self.text, match.end())
        if not end:
            raise self.fail("unterminated heredoc")
        body = self.text[match.end() : end.start()]
        self.pos = end.end()
        lines = body.split("\n")
        if body.endswith("\n"):
            lines = lines[:-1]
        if strip:
            indents = [len(line) - len(line.lstrip(" \t")) for line in lines if line.strip()]
            cut = min(indents) if indents else 0
            lines = [line[cut:] for line in lines]
        text = "\n".join(lines) + "\n"
        return _Parser(text).template(None)


def parse_expression(text: str) -> tuple:
    return _Parser(text).whole()


def source_of(raw: Any) -> str | None:
    """The HCL source of an attribute value as python-hcl2 gives it, or None for a plain value (number,
    bool, null) and containers (their items are sources of their own)."""
    if not isinstance(raw, str):
        return None
    if raw.startswith("${") and raw.endswith("}"):
        return raw[2:-1]
    if raw.startswith('"<<') and raw.endswith('"') and "\n" in raw:
        # a heredoc: python-hcl2 keeps its markers inside quotes
        return raw[1:-1]
    return raw


# ---------------------------------------------------------------- expressions: evaluation

Scope = Mapping[str, Any]


class Context:
    """What an expression can refer to: a resolver of root names (``var``, ``local``, ``path``, ...), the
    functions, and where the expression is (for messages)."""

    def __init__(
        self, resolve: Callable[[str, list[str], str], Any], functions: Mapping[str, Callable], where: str
    ):
        self.resolve = resolve
        self.functions = functions
        self.where = where

    def at(self, where: str) -> Context:
        return Context(self.resolve, self.functions, where)


def evaluate_raw(raw: Any, context: Context, scope: Scope | None = None) -> Any:
    """A value as python-hcl2 gives it (nested lists and dicts of expression sources), evaluated."""
    scope = scope or {}
    if isinstance(raw, list):
        return [evaluate_raw(item, context, scope) for item in raw]
    if isinstance(raw, dict):
        out = {}
        for key, value in raw.items():
            if key.startswith("__") and key.endswith("__"):
                continue
            name = evaluate_raw(key, context, scope) if key.startswith(('"', "${")) else key
            out[str(name)] = evaluate_raw(value, context, scope)
        return out
    text = source_of(raw)
    if text is None:
        return raw
    try:
        tree = parse_expression(text)
    except EvalError as exc:
        return Unknown(text, "the importer cannot read this expression (%s)" % exc)
    try:
        return evaluate(tree, context, scope)
    except EvalError as exc:
        return Unknown(text, str(exc))


def _refs(tree: Any, found: list[str]) -> list[str]:
    if isinstance(tree, tuple) and tree:
        if tree[0] == "ref":
            found.append(tree[1])
        for item in tree[1:]:
            _refs(item, found)
    elif isinstance(tree, list):
        for item in tree:
            _refs(item, found)
    return found


def _path(tree: tuple) -> tuple[str, list[str]] | None:
    """``var.a.b`` as ("var", ["a", "b"]): a root name and the attribute names after it."""
    names: list[str] = []
    while tree[0] == "attr":
        names.insert(0, tree[2])
        tree = tree[1]
    if tree[0] == "ref":
        return tree[1], names
    return None


def evaluate(tree: tuple, context: Context, scope: Scope) -> Any:
    kind = tree[0]
    if kind == "lit":
        return tree[1]
    if kind == "template":
        values = [part if isinstance(part, str) else evaluate(part, context, scope) for part in tree[1]]
        unknown = [value for value in values if isinstance(value, (Unknown, DataRef))]
        if unknown:
            if len(values) == 1:
                return unknown[0]
            first = unknown[0]
            return Unknown(first.text if isinstance(first, Unknown) else repr(first), _why(first))
        if len(values) == 1 and not isinstance(tree[1][0], str):
            return values[0]
        return "".join(_text(value) for value in values)
    if kind in ("ref", "attr"):
        path = _path(tree)
        if path is not None:
            root, names = path
            if root in scope:
                value = scope[root]
                for name in names:
                    value = _get(value, name)
                return value
            return context.resolve(root, names, context.where)
        return _get(evaluate(tree[1], context, scope), tree[2])
    if kind == "index":
        base = evaluate(tree[1], context, scope)
        key = evaluate(tree[2], context, scope)
        return _get(base, key)
    if kind == "call":
        return _call(tree, context, scope)
    if kind == "cond":
        condition = evaluate(tree[1], context, scope)
        if isinstance(condition, (Unknown, DataRef)):
            return condition if isinstance(condition, Unknown) else Unknown(repr(condition), _why(condition))
        return evaluate(tree[2] if _truth(condition) else tree[3], context, scope)
    if kind == "not":
        value = evaluate(tree[1], context, scope)
        return value if isinstance(value, Unknown) else not _truth(value)
    if kind == "neg":
        value = evaluate(tree[1], context, scope)
        return value if isinstance(value, Unknown) else -_number(value)
    if kind == "op":
        return _operate(tree[1], evaluate(tree[2], context, scope), evaluate(tree[3], context, scope))
    if kind == "tuple":
        return [evaluate(item, context, scope) for item in tree[1]]
    if kind == "object":
        return {
            _text(evaluate(key, context, scope)): evaluate(value, context, scope) for key, value in tree[1]
        }
    if kind == "for":
        return _for(tree, context, scope)
    raise EvalError("cannot evaluate %s" % kind)


def _why(value: Any) -> str:
    if isinstance(value, Unknown):
        return value.why
    return "%r is a data source's attribute, known when Packer reads the data source" % value


def _get(value: Any, key: Any) -> Any:
    if isinstance(value, (Unknown, DataRef)):
        return value
    if isinstance(value, Mapping):
        if str(key) not in value:
            raise EvalError("no attribute or key %r" % key)
        return value[str(key)]
    if isinstance(value, list):
        if not isinstance(key, int) or not -len(value) < key < len(value):
            raise EvalError("index %r is out of range" % key)
        return value[key]
    raise EvalError("cannot take %r of %r" % (key, value))


def _truth(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if value in ("true", "false"):
        return value == "true"
    raise EvalError("%r is not a bool" % (value,))


def _number(value: Any) -> float | int:
    if isinstance(value, bool):
        raise EvalError("%r is not a number" % value)
    if isinstance(value, (int, float)):
        return value
    try:
        return int(value)
    except (TypeError, ValueError):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise EvalError("%r is not a number" % (value,)) from None


def _text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    if isinstance(value, (str, int, float)):
        return str(value)
    if value is None:
        raise EvalError("a null value in a string")
    raise EvalError("%s cannot be used as a string" % type(value).__name__)


def _operate(operator: str, left: Any, right: Any) -> Any:
    for value in (left, right):
        if isinstance(value, (Unknown, DataRef)):
            return value if isinstance(value, Unknown) else Unknown(repr(value), _why(value))
    if operator == "==":
        return left == right
    if operator == "!=":
        return left != right
    if operator in ("&&", "||"):
        return _truth(left) and _truth(right) if operator == "&&" else _truth(left) or _truth(right)
    a, b = _number(left), _number(right)
    if operator == "<":
        return a < b
    if operator == ">":
        return a > b
    if operator == "<=":
        return a <= b
    if operator == ">=":
        return a >= b
    if operator == "+":
        return a + b
    if operator == "-":
        return a - b
    if operator == "*":
        return a * b
    if operator == "/":
        result = a / b
        return int(result) if result.is_integer() else result
    return a % b


def _for(tree: tuple, context: Context, scope: Scope) -> Any:
    close, (key_name, value_name), collection_tree, key_tree, value_tree, condition = tree[1:]
    collection = evaluate(collection_tree, context, scope)
    if isinstance(collection, (Unknown, DataRef)):
        return collection
    pairs = list(collection.items()) if isinstance(collection, Mapping) else list(enumerate(collection))
    items: list[Any] = []
    result: dict[str, Any] = {}
    for key, value in pairs:
        inner = dict(scope)
        inner[value_name] = value
        if key_name:
            inner[key_name] = key
        if condition is not None and not _truth(evaluate(condition, context, inner)):
            continue
        if close == "]":
            items.append(evaluate(value_tree, context, inner))
        else:
            result[_text(evaluate(key_tree, context, inner))] = evaluate(value_tree, context, inner)
    return items if close == "]" else result


def _call(tree: tuple, context: Context, scope: Scope) -> Any:
    name, arg_trees, expand = tree[1:]
    if name == "try":
        for arg in arg_trees:
            try:
                value = evaluate(arg, context, scope)
            except EvalError:
                continue
            return value
        raise EvalError("no argument of try() could be evaluated")
    function = context.functions.get(name)
    if function is None:
        raise EvalError("function %s() is not evaluated by the importer" % name)
    args = [evaluate(arg, context, scope) for arg in arg_trees]
    if expand and args:
        args = args[:-1] + list(args[-1])
    for value in args:
        if isinstance(value, (Unknown, DataRef)):
            return value if isinstance(value, Unknown) else Unknown(repr(value), _why(value))
    try:
        return function(*args)
    except EvalError:
        raise
    except Exception as exc:  # noqa: BLE001 - a bad argument is the template's error, named with its call
        raise EvalError("%s(): %s" % (name, exc)) from None


# ---------------------------------------------------------------- functions

# formatdate's tokens (Terraform and Packer share them) as strftime directives or callables
_DATE_TOKENS = [
    ("YYYY", "%Y"),
    ("YY", "%y"),
    ("MMMM", "%B"),
    ("MMM", "%b"),
    ("MM", "%m"),
    ("M", lambda d: str(d.month)),
    ("DD", "%d"),
    ("D", lambda d: str(d.day)),
    ("EEEE", "%A"),
    ("EEE", "%a"),
    ("hh", "%H"),
    ("h", lambda d: str(d.hour)),
    ("HH", "%I"),
    ("H", lambda d: str(d.hour % 12 or 12)),
    ("AA", "%p"),
    ("aa", lambda d: d.strftime("%p").lower()),
    ("mm", "%M"),
    ("m", lambda d: str(d.minute)),
    ("ss", "%S"),
    ("s", lambda d: str(d.second)),
    ("ZZZZZ", lambda d: "Z" if not d.utcoffset() else d.strftime("%z")[:3] + ":" + d.strftime("%z")[3:]),
    ("ZZZZ", "%z"),
    ("ZZZ", lambda d: "UTC" if not d.utcoffset() else d.strftime("%Z")),
    ("Z", lambda d: "Z" if not d.utcoffset() else d.strftime("%z")),
]


def parse_time(text: str) -> datetime.datetime:
    """An RFC 3339 time (what timestamp() returns)."""
    value = str(text).replace("Z", "+00:00")
    try:
        return datetime.datetime.fromisoformat(value)
    except ValueError:
        raise EvalError("%r is not an RFC 3339 time" % text) from None


def formatdate(spec: str, timestamp: str) -> str:
    moment = parse_time(timestamp)
    out: list[str] = []
    index = 0
    while index < len(spec):
        if spec[index] == "'":
            end = spec.find("'", index + 1)
            if end < 0:
                raise EvalError("unterminated literal in the format %r" % spec)
            out.append(spec[index + 1 : end] if end > index + 1 else "'")
            index = end + 1
            continue
        for token, directive in _DATE_TOKENS:
            if spec.startswith(token, index):
                out.append(moment.strftime(directive) if isinstance(directive, str) else directive(moment))
                index += len(token)
                break
        else:
            if spec[index].isalpha():
                raise EvalError("unknown formatdate token at %r" % spec[index:])
            out.append(spec[index])
            index += 1
    return "".join(out)


def go_replacement(replacement: str) -> str:
    """A Go regexp replacement (``$1``, ``${name}``) as Python's re.sub writes it."""
    out = replacement.replace("\\", "\\\\")
    out = re.sub(r"\$\{([A-Za-z0-9_]+)\}", r"\\g<\1>", out)
    out = re.sub(r"\$([0-9]+)", r"\\g<\1>", out)
    return out.replace("$$", "$")


def go_format(spec: str, *args: Any) -> str:
    """Go's fmt verbs as Packer's format() takes them: %s %d %f %q %v %t %%, with flags and width."""
    values = list(args)
    out: list[str] = []

    def verb(match: re.Match) -> str:
        flags, width, precision, letter = match.group(1), match.group(2), match.group(3), match.group(4)
        if letter == "%":
            return "%"
        if not values:
            raise EvalError("too few arguments for the format %r" % spec)
        value = values.pop(0)
        if letter == "q":
            return json.dumps(_text(value))
        if letter == "t":
            return "true" if _truth(value) else "false"
        if letter in ("v", "s"):
            text = _text(value) if not isinstance(value, (list, dict)) else json.dumps(value)
            letter, value = "s", text
        elif letter == "d":
            value = int(_number(value))
        elif letter in ("f", "e", "g"):
            value = float(_number(value))
        elif letter in ("x", "X", "o", "b"):
            value = int(_number(value))
            if letter == "b":
                return format(value, "b")
        return ("%" + flags + width + (precision or "") + letter) % value

    out.append(re.sub(r"%([-+ 0#]*)([0-9]*)(\.[0-9]+)?([sdfegqvtxXob%])", verb, spec))
    return "".join(out)


def _coalesce(*args: Any) -> Any:
    for value in args:
        if value is not None and value != "":
            return value
    raise EvalError("no non-null, non-empty argument")


def _lookup(mapping: Mapping, key: Any, *default: Any) -> Any:
    if str(key) in mapping:
        return mapping[str(key)]
    if default:
        return default[0]
    raise EvalError("the map has no key %r" % key)


def _replace(text: str, search: str, replacement: str) -> str:
    if len(search) > 1 and search.startswith("/") and search.endswith("/"):
        return re.sub(search[1:-1], go_replacement(replacement), text)
    return text.replace(search, replacement)


def _merge(*maps: Mapping) -> dict:
    out: dict = {}
    for mapping in maps:
        out.update(mapping)
    return out


def _flatten(value: list) -> list:
    out: list = []
    for item in value:
        out.extend(_flatten(item) if isinstance(item, list) else [item])
    return out


def functions(now: datetime.datetime, new_uuid: Callable[[], str], cwd: str, env: Mapping[str, str]) -> dict:
    """The functions the importer evaluates, with *now* for timestamp() and *new_uuid* for uuidv4()."""

    def read(path: str) -> str:
        with open(os.path.join(cwd, path), encoding="utf-8") as handle:
            return handle.read()

    stamp = now.astimezone(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "timestamp": lambda: stamp,
        "formatdate": formatdate,
        "lower": lambda text: _text(text).lower(),
        "upper": lambda text: _text(text).upper(),
        "title": lambda text: _text(text).title(),
        "replace": lambda text, search, repl: _replace(_text(text), _text(search), _text(repl)),
        "regex_replace": lambda text, pattern, repl: re.sub(pattern, go_replacement(repl), _text(text)),
        "regex": _regex,
        "split": lambda separator, text: _text(text).split(_text(separator)),
        "join": lambda separator, items: _text(separator).join(_text(item) for item in items),
        "format": go_format,
        "coalesce": _coalesce,
        "lookup": _lookup,
        "concat": lambda *lists: [item for each in lists for item in each],
        "abspath": lambda path: os.path.normpath(os.path.join(cwd, _text(path))),
        "basename": lambda path: os.path.basename(_text(path).rstrip("/")),
        "dirname": lambda path: os.path.dirname(_text(path)),
        "uuidv4": new_uuid,
        "env": lambda name: env.get(_text(name), ""),
        "trimspace": lambda text: _text(text).strip(),
        "trimprefix": lambda text, prefix: (
            _text(text)[len(prefix) :] if _text(text).startswith(prefix) else text
        ),
        "trimsuffix": lambda text, suffix: (
            _text(text)[: -len(suffix)] if suffix and _text(text).endswith(suffix) else text
        ),
        "chomp": lambda text: _text(text).rstrip("\r\n"),
        "substr": lambda text, offset, length: _text(text)[offset : None if length < 0 else offset + length],
        "length": len,
        "element": lambda items, index: items[int(index) % len(items)],
        "contains": lambda items, value: value in items,
        "keys": sorted,
        "values": lambda mapping: [mapping[key] for key in sorted(mapping)],
        "merge": _merge,
        "flatten": _flatten,
        "distinct": lambda items: [item for index, item in enumerate(items) if item not in items[:index]],
        "tostring": _text,
        "tonumber": _number,
        "tobool": _truth,
        "tolist": list,
        "toset": lambda items: sorted(set(items), key=str),
        "tomap": dict,
        "max": lambda *numbers: max(_number(n) for n in numbers),
        "min": lambda *numbers: min(_number(n) for n in numbers),
        "file": read,
        "base64encode": lambda text: base64.b64encode(_text(text).encode()).decode(),
        "base64decode": lambda text: base64.b64decode(_text(text)).decode(),
        "sha256": lambda text: hashlib.sha256(_text(text).encode()).hexdigest(),
        "md5": lambda text: hashlib.md5(_text(text).encode()).hexdigest(),  # noqa: S324 - Packer's md5()
        "jsonencode": lambda value: json.dumps(value, separators=(",", ":")),
    }


def _regex(pattern: str, text: str) -> Any:
    match = re.search(pattern, text)
    if not match:
        raise EvalError("the pattern %r matches nothing in %r" % (pattern, text))
    if match.groupdict():
        return match.groupdict()
    if match.groups():
        return list(match.groups())
    return match.group(0)


def new_uuid() -> str:
    return str(uuid.uuid4())


def references(raw: Any) -> list[str]:
    """The root names an attribute value refers to (``var``, ``local``, ``data``, ...)."""
    if isinstance(raw, list):
        return [name for item in raw for name in references(item)]
    if isinstance(raw, dict):
        return [name for value in raw.values() for name in references(value)]
    text = source_of(raw)
    if text is None:
        return []
    try:
        return _refs(parse_expression(text), [])
    except EvalError:
        return []
