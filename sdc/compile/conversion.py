"""Two costs Paddle 3.2's dy2static conversion repeats at every layer call, removed while a trace runs.

`paddle.jit.to_static` converts each function it meets (its AST rewritten, compiled, imported from a temp
file) and caches the result, but:

1. The cache (`program_translator._FUNCTION_CACHE`) is a WeakKeyDictionary keyed by the callable, and a
   layer's forward reaches it as a bound method: a new object at every attribute access, gone right after.
   The cache never hits, so every call of every layer reads, rewrites and compiles its source again. Keyed
   by the method's function instead, each forward is converted once per process; the converted code never
   sees the instance (it is bound again at the call), so the program is the same.
2. `is_unsupported`, asked for every call inside converted code, rebuilds the list of the thousands of
   functions of its builtin-like modules each time and searches it one by one. The same test runs against
   a set built once per trace.

Measured on the tiny SD 1.5 UNet (tests/fixtures/sd1-tiny): its trace 4.9 s -> 2.3 s, the SDXL fixture's
8.2 s -> 3.2 s; every artifact of the fixtures byte-identical. Where Paddle lacks these names (another
version), the trace runs unchanged.
"""

from __future__ import annotations

import contextlib
import inspect
import weakref
from typing import Any, Callable, Iterator

_converted: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()  # a method's function -> its conversion


@contextlib.contextmanager
def fast_conversion() -> Iterator[None]:
    """Patch both for the duration of the block (one trace), then restore Paddle's own."""
    try:
        from paddle.jit.dy2static import convert_call_func as calls
        from paddle.jit.dy2static import program_translator as translator

        cache = translator._FUNCTION_CACHE
        convert = cache.convert_with_cache
        if not hasattr(calls, "is_unsupported"):
            raise AttributeError("is_unsupported")
        modules = list(calls.BUILTIN_LIKELY_MODULES)
        paths = tuple(p for m in modules if (p := calls.get_module_defining_path(m)) is not None)
        builtin_ids = frozenset(id(f) for m in modules for f in calls.get_module_functions(m))
        is_paddle_func, log = calls.is_paddle_func, calls.translator_logger.log
    except (ImportError, AttributeError):
        yield
        return

    def is_unsupported(func) -> bool:
        """convert_call_func.is_unsupported, its lists built once: True for functions of builtin-like
        modules (by file, or by identity for C functions) and for Paddle's own."""
        code = getattr(func, "__code__", None)
        if (code is not None and code.co_filename and code.co_filename.startswith(paths)) or id(func) in builtin_ids:
            log(2, "Whitelist: %s is part of built-in module and does not have to be transformed.", func)
            return True
        if is_paddle_func(func):
            log(2, "Whitelist: %s is part of Paddle module and does not have to be transformed.", func)
            return True
        return False

    with _replaced(cache, "convert_with_cache", _by_function(convert)), \
            _replaced(calls, "is_unsupported", is_unsupported):
        yield


def _by_function(convert: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """FunctionCache.convert_with_cache, with bound methods cached under their function."""

    def convert_with_cache(function):
        if not inspect.ismethod(function):
            return convert(function)
        key = function.__func__
        static = _converted.get(key)
        if static is None:
            static = _converted[key] = convert(function)
        return static

    return convert_with_cache


@contextlib.contextmanager
def _replaced(owner: Any, name: str, value: Any) -> Iterator[None]:
    """`owner.name = value` inside the block; afterwards what was there (an instance attribute is removed)."""
    own = name in vars(owner)
    old = getattr(owner, name)
    setattr(owner, name, value)
    try:
        yield
    finally:
        if own:
            setattr(owner, name, old)
        else:
            delattr(owner, name)
