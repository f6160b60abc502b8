"""The fixed function library: registration, argument checks, and the method-call sugar table.

A library function is a plain Python function ``impl(ctx, *args, **kwargs)``; its signature (minus
``ctx``) is what the compiler checks calls against. ``s.upper()`` is sugar for ``upper(s)``: the
method table maps a method name and the receiver's SEL type to a library function, so method syntax
never reaches a real Python attribute.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from legato.sel.errors import SelEvalError
from legato.sel.values import type_name

Impl = Callable[..., Any]
F = TypeVar("F", bound=Impl)


@dataclass(frozen=True, slots=True)
class Function:
    """One library function."""

    name: str
    impl: Impl
    signature: inspect.Signature
    pure: bool
    """Same arguments, same result, no clock: calls with constant arguments are folded at compile time."""
    summary: str


FUNCTIONS: dict[str, Function] = {}
METHODS: dict[str, dict[str, Function]] = {}
"""method name -> receiver type name (as ``type_name`` spells it) -> function taking the receiver first."""


def _signature(impl: Impl) -> inspect.Signature:
    sig = inspect.signature(impl)
    params = list(sig.parameters.values())[1:]  # drop ctx
    return sig.replace(parameters=params)


def library(
    name: str, *, pure: bool = True, methods: tuple[str, ...] = (), function: bool = True
) -> Callable[[F], F]:
    """Register ``impl`` as the SEL function ``name`` (and as a method of the ``methods`` receiver types)."""

    def register(impl: F) -> F:
        doc = (impl.__doc__ or "").strip().splitlines()
        fn = Function(name, impl, _signature(impl), pure, doc[0] if doc else "")
        if function:
            if name in FUNCTIONS:
                raise RuntimeError(f"SEL function {name!r} registered twice")
            FUNCTIONS[name] = fn
        for kind in methods:
            METHODS.setdefault(name, {})[kind] = fn
        return impl

    return register


def check_arity(fn: Function, nargs: int, keywords: list[str]) -> str | None:
    """Why a call with ``nargs`` positional args and these keywords cannot bind, or None when it can."""
    try:
        fn.signature.bind(*([None] * nargs), **dict.fromkeys(keywords))
    except TypeError as exc:
        return str(exc).replace("missing a required argument: ", "missing the argument ")
    return None


# ---------------------------------------------------------------------------- argument checks


def fail(fn: str, message: str) -> SelEvalError:
    """An evaluation error naming the library function: ``fn(): message``."""
    return SelEvalError(f"{fn}(): {message}")


def want_str(value: Any, fn: str, arg: str = "argument") -> str:
    """``value`` when it is a string, else an error naming the function and argument."""
    if type(value) is not str:
        raise fail(fn, f"{arg} must be a string, got {type_name(value)}")
    return value


def want_int(value: Any, fn: str, arg: str = "argument") -> int:
    """``value`` when it is an int, else an error naming the function and argument."""
    if type(value) is not int:
        raise fail(fn, f"{arg} must be an int, got {type_name(value)}")
    return value


def want_number(value: Any, fn: str, arg: str = "argument") -> int | float:
    """``value`` when it is an int or a float, else an error naming the function and argument."""
    if type(value) is not int and type(value) is not float:
        raise fail(fn, f"{arg} must be a number, got {type_name(value)}")
    return value


def want_bool(value: Any, fn: str, arg: str = "argument") -> bool:
    """``value`` when it is a bool, else an error naming the function and argument."""
    if type(value) is not bool:
        raise fail(fn, f"{arg} must be a bool, got {type_name(value)}")
    return value
