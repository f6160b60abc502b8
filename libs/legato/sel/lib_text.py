"""Library: strings — case, trimming, splitting and joining, replacing, padding, formatting, quoting.

Every function sizes its result *before* building it (``replace`` counts the matches first,
``split`` splits at most ``max_collection`` times), so a hostile argument meets a limit, not a
memory blow-up. There is no regex: nothing here can backtrack.
"""

from __future__ import annotations

import hashlib
import re
import shlex
import urllib.parse
from datetime import date
from typing import Any

from legato.sel.errors import SelEvalError
from legato.sel.lib_registry import fail, library, want_int, want_str
from legato.sel.runtime import Ctx
from legato.sel.values import iterate, to_text, type_name

_LINE_BREAKS = ("\n", "\r", "\x0b", "\x0c", "\x1c", "\x1d", "\x1e", "\x85", "\u2028", "\u2029")


def _case(ctx: Ctx, fn: str, value: Any, op: Any) -> str:
    s = want_str(value, fn, "text")
    ctx.charge_chars(len(s))
    out: str = op(s)
    ctx.check_string(len(out))  # at most 3x the input ("ß".upper() == "SS"), itself within the cap
    return out


@library("upper", methods=("string",))
def upper(ctx: Ctx, text: Any) -> str:
    """Text in upper case."""
    return _case(ctx, "upper", text, str.upper)


@library("lower", methods=("string",))
def lower(ctx: Ctx, text: Any) -> str:
    """Text in lower case."""
    return _case(ctx, "lower", text, str.lower)


@library("title", methods=("string",))
def title(ctx: Ctx, text: Any) -> str:
    """Text with each word capitalised."""
    return _case(ctx, "title", text, str.title)


@library("capitalize", methods=("string",))
def capitalize(ctx: Ctx, text: Any) -> str:
    """Text with its first character upper case and the rest lower case."""
    return _case(ctx, "capitalize", text, str.capitalize)


def _strip(ctx: Ctx, fn: str, text: Any, chars: Any, op: Any) -> str:
    s = want_str(text, fn, "text")
    if chars is not None:
        want_str(chars, fn, "chars")
        ctx.charge_chars(len(s) * max(1, min(len(chars), 64)))
    else:
        ctx.charge_chars(len(s))
    out: str = op(s, chars)
    return out


@library("strip", methods=("string",))
def strip(ctx: Ctx, text: Any, chars: Any = None) -> str:
    """Text without leading and trailing whitespace (or ``chars``)."""
    return _strip(ctx, "strip", text, chars, str.strip)


@library("lstrip", methods=("string",))
def lstrip(ctx: Ctx, text: Any, chars: Any = None) -> str:
    """Text without leading whitespace (or ``chars``)."""
    return _strip(ctx, "lstrip", text, chars, str.lstrip)


@library("rstrip", methods=("string",))
def rstrip(ctx: Ctx, text: Any, chars: Any = None) -> str:
    """Text without trailing whitespace (or ``chars``)."""
    return _strip(ctx, "rstrip", text, chars, str.rstrip)


@library("split", methods=("string",))
def split(ctx: Ctx, text: Any, sep: Any = None, maxsplit: int = -1) -> list[str]:
    """Pieces of text between ``sep`` (or runs of whitespace), at most ``maxsplit`` splits."""
    s = want_str(text, "split", "text")
    want_int(maxsplit, "split", "maxsplit")
    if sep is not None and not want_str(sep, "split", "sep"):
        raise fail("split", "sep must not be empty")
    ctx.charge_chars(len(s))
    cap = ctx.limits.max_collection
    splits = cap if maxsplit < 0 or maxsplit > cap else maxsplit
    pieces = s.split(sep, splits)  # at most cap + 1 pieces, so memory stays bounded
    ctx.check_collection(len(pieces) if len(pieces) <= cap else cap + 1)
    return pieces


@library("lines", methods=("string",))
def lines(ctx: Ctx, text: Any) -> list[str]:
    """Lines of a text, without their line endings."""
    s = want_str(text, "lines", "text")
    ctx.charge_chars(len(s))
    ctx.check_collection(sum(s.count(c) for c in _LINE_BREAKS) + 1)  # an upper bound ("\r\n" counts twice)
    return s.splitlines()


@library("join", methods=("list", "range", "set"))
def join(ctx: Ctx, items: Any, sep: Any = "") -> str:
    """Items joined into one text with ``sep`` between them (non-strings are converted with ``str``)."""
    separator = want_str(sep, "join", "sep")
    if type(items) is str:
        raise fail("join", "expected a list, got string")
    try:
        values = iterate(items, ctx)
    except SelEvalError:
        raise fail("join", f"expected a list, got {type_name(items)}") from None
    ctx.charge(len(values))
    parts: list[str] = [v if type(v) is str else to_text(v, ctx) for v in values]
    total = sum(len(p) for p in parts) + len(separator) * max(0, len(parts) - 1)
    ctx.check_string(total)
    return separator.join(parts)


def _str_join(ctx: Ctx, sep: Any, items: Any) -> str:
    """``", ".join(items)``: Python's spelling, with the separator as receiver."""
    return join(ctx, items, sep)


library("join", methods=("string",), function=False)(_str_join)


@library("replace", methods=("string",))
def replace(ctx: Ctx, text: Any, old: Any, new: Any, count: int = -1) -> str:
    """Text with ``old`` replaced by ``new`` (the first ``count`` times, or all)."""
    s = want_str(text, "replace", "text")
    want_str(old, "replace", "old")
    want_str(new, "replace", "new")
    want_int(count, "replace", "count")
    ctx.charge_chars(len(s))
    matches = len(s) + 1 if not old else s.count(old)
    if count >= 0:
        matches = min(matches, count)
    ctx.check_string(len(s) + matches * (len(new) - len(old)))
    return s.replace(old, new, count)


@library("startswith", methods=("string",))
def startswith(ctx: Ctx, text: Any, prefix: Any) -> bool:
    """True when text starts with ``prefix``."""
    s = want_str(text, "startswith", "text")
    p = want_str(prefix, "startswith", "prefix")
    ctx.charge_chars(len(p))
    return s.startswith(p)


@library("endswith", methods=("string",))
def endswith(ctx: Ctx, text: Any, suffix: Any) -> bool:
    """True when text ends with ``suffix``."""
    s = want_str(text, "endswith", "text")
    p = want_str(suffix, "endswith", "suffix")
    ctx.charge_chars(len(p))
    return s.endswith(p)


@library("find", methods=("string",))
def find(ctx: Ctx, text: Any, sub: Any) -> int:
    """Position of the first ``sub`` in text, or -1."""
    s = want_str(text, "find", "text")
    ctx.charge_chars(len(s))
    return s.find(want_str(sub, "find", "sub"))


def _pad(ctx: Ctx, fn: str, text: Any, width: Any, fill: Any, op: Any) -> str:
    s = want_str(text, fn, "text")
    w = want_int(width, fn, "width")
    f = want_str(fill, fn, "fill")
    if len(f) != 1:
        raise fail(fn, "fill must be one character")
    ctx.check_string(max(len(s), w))
    out: str = op(s, w, f)
    return out


@library("pad_left", methods=("string",))
def pad_left(ctx: Ctx, text: Any, width: Any, fill: Any = " ") -> str:
    """Text right-aligned in ``width`` characters: ``pad_left("7", 3, "0") == "007"``."""
    return _pad(ctx, "pad_left", text, width, fill, str.rjust)


@library("pad_right", methods=("string",))
def pad_right(ctx: Ctx, text: Any, width: Any, fill: Any = " ") -> str:
    """Text left-aligned in ``width`` characters."""
    return _pad(ctx, "pad_right", text, width, fill, str.ljust)


@library("zfill", methods=("string",))
def zfill(ctx: Ctx, text: Any, width: Any) -> str:
    """Text padded with zeros on the left to ``width`` (after any sign)."""
    s = want_str(text, "zfill", "text")
    ctx.check_string(max(len(s), want_int(width, "zfill", "width")))
    return s.zfill(width)


@library("repeat", methods=("string",))
def repeat(ctx: Ctx, text: Any, times: Any) -> str:
    """Text repeated ``times`` times."""
    s = want_str(text, "repeat", "text")
    n = want_int(times, "repeat", "times")
    ctx.check_string(len(s) * max(0, n))
    return s * n


@library("contains", methods=("string",))
def contains_(ctx: Ctx, text: Any, sub: Any) -> bool:
    """True when ``sub`` occurs in text (same as ``sub in text``)."""
    s = want_str(text, "contains", "text")
    ctx.charge_chars(len(s))
    return want_str(sub, "contains", "sub") in s


@library("shell_quote")
def shell_quote(ctx: Ctx, text: Any) -> str:
    """Text quoted for a POSIX shell command line: ``shell_quote("a b") == "'a b'"``."""
    s = text if type(text) is str else to_text(text, ctx)
    ctx.check_string(len(s) + 2 + 4 * s.count("'"))
    return shlex.quote(s)


@library("raw")
def raw(ctx: Ctx, value: Any) -> Any:
    """The value itself; in a shell ``command``, ``${raw(x)}`` pastes ``x`` unquoted (as shell code)."""
    return value


@library("url_encode")
def url_encode(ctx: Ctx, text: Any) -> str:
    """Text percent-encoded for a URL path segment or query value."""
    s = text if type(text) is str else to_text(text, ctx)
    ctx.check_string(len(s) * 12)  # one character is at most 4 UTF-8 bytes, each "%XX"
    return urllib.parse.quote(s, safe="")


@library("sha256")
def sha256(ctx: Ctx, text: Any) -> str:
    """Hex SHA-256 of a text's UTF-8 bytes."""
    s = want_str(text, "sha256", "text")
    ctx.charge_chars(len(s))
    return hashlib.sha256(s.encode("utf-8", "surrogatepass")).hexdigest()


# ---------------------------------------------------------------------------- format

# The format-spec mini-language minus nothing dangerous: width and precision are capped at 3 digits.
_SPEC = re.compile(
    r"(?:[^{}]?[<>=^])?[+\- ]?#?0?(?P<width>\d{1,3})?[,_]?(?:\.(?P<precision>\d{1,3}))?[bcdeEfFgGnosxX%]?"
)
# strftime directives that produce bounded text; no flags or widths (glibc pads "%1000000Y").
_STRFTIME_DIRECTIVES = frozenset("aAbBcdDefFgGHIjmMpSuUVwWxXyYzZ%")


def check_strftime(fmt: str, fn: str) -> None:
    """Refuse strftime formats with flags, widths or unknown directives."""
    if len(fmt) > 200:
        raise fail(fn, "format longer than 200 characters")
    i = 0
    while i < len(fmt):
        if fmt[i] == "%":
            if i + 1 >= len(fmt) or fmt[i + 1] not in _STRFTIME_DIRECTIVES:
                shown = fmt[i : i + 2]
                raise fail(fn, f"unsupported directive {shown!r} (use %Y %m %d %H %M %S %j %a %b %z ...)")
            i += 2
        else:
            i += 1


def format_one(ctx: Ctx, value: Any, spec: str, fn: str) -> str:
    """One value formatted with a checked format spec."""
    if not spec:
        return to_text(value, ctx)
    if isinstance(value, date):
        check_strftime(spec, fn)
        return format(value, spec)
    if _SPEC.fullmatch(spec) is None:
        raise fail(fn, f"invalid format spec {spec!r}")
    if type(value) not in (int, float, str, bool):
        raise fail(fn, f"a format spec applies to numbers and strings, not {type_name(value)}")
    try:
        out = format(value, spec)
    except ValueError as exc:
        raise fail(fn, f"{exc} (spec {spec!r})") from None
    ctx.check_string(len(out))
    return out


@library("format", methods=("string",))
def format_(ctx: Ctx, template: Any, *args: Any, **kwargs: Any) -> str:
    """``format("{} rows on {date}", n, date=d)``: ``{}``, ``{0}``, ``{name}``, optional ``:spec``; ``{{``/``}}`` escape."""
    t = want_str(template, "format", "template")
    ctx.charge_chars(len(t))
    out: list[str] = []
    size = 0
    auto = 0
    i = 0
    n = len(t)
    while i < n:
        c = t[i]
        if c == "{":
            if i + 1 < n and t[i + 1] == "{":
                out.append("{")
                i += 2
                size += 1
                continue
            end = t.find("}", i + 1)
            if end < 0:
                raise fail("format", "unclosed '{' in template")
            field = t[i + 1 : end]
            name, _, spec = field.partition(":")
            if "{" in field or "!" in name or "." in name or "[" in name:
                raise fail(
                    "format",
                    f"unsupported field {{{field}}}: use {{}}, {{0}} or {{name}} with an optional :spec",
                )
            if name == "":
                if auto >= len(args):
                    raise fail("format", "not enough arguments for the template")
                value = args[auto]
                auto += 1
            elif name.isdigit():
                pos = int(name)
                if pos >= len(args):
                    raise fail("format", f"no argument {pos}")
                value = args[pos]
            else:
                if name not in kwargs:
                    raise fail("format", f"no argument named {name!r}")
                value = kwargs[name]
            piece = format_one(ctx, value, spec, "format")
            size += len(piece)
            ctx.check_string(size)
            out.append(piece)
            i = end + 1
        elif c == "}":
            if i + 1 < n and t[i + 1] == "}":
                out.append("}")
                size += 1
                i += 2
                continue
            raise fail("format", "single '}' in template (write '}}')")
        else:
            j = i
            while j < n and t[j] not in "{}":
                j += 1
            out.append(t[i:j])
            size += j - i
            i = j
    ctx.check_string(size)
    return "".join(out)
