"""Merge-field templates: Jinja in its sandbox, with unknown fields as errors and a cost limit.

StrictUndefined turns `{{ frist_name }}` into an error instead of an empty string, and
the sandbox stops templates reaching Python internals. Campaigns are validated against
every enrolled lead before they start, so a bad field is caught before the first email.

The sandbox also bounds what one render may cost (a typo such as `'a' * 10**9` or two
nested loops over `range(100000)` must not take the server down). Signals cannot stop a
render in a worker thread, so the sandbox counts instead: every loop step, call and piece
of text produced is charged to the render's budget (steps, characters, a deadline), and
the operators that multiply sizes (`*`, `**`, `%`, `+`, widths in formats, padding
filters, `replace`, `join`, `lipsum`) are checked before they run. The sender renders
through `render`, so the same limits apply when mail goes out.
"""

from __future__ import annotations

import math
import re
import string
import time
from contextvars import ContextVar
from dataclasses import dataclass
from functools import lru_cache, wraps
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, UndefinedError, nodes, pass_context
from jinja2.sandbox import ImmutableSandboxedEnvironment
from jinja2.utils import generate_lorem_ipsum

SAMPLE_UNSUBSCRIBE_URL = "https://example.invalid/u/preview"
MAX_OUTPUT = 1_000_000  # characters in a rendered subject or body
MAX_PRODUCED = 4 * MAX_OUTPUT  # characters produced in one render, intermediate strings included
MAX_STEPS = 250_000  # loop iterations, calls and output pieces in one render
MAX_SECONDS = 2.0  # wall-clock time of one render, checked at every step
MAX_WIDTH = 10_000  # a format width or precision, a padding, a batch size
MAX_INT_BITS = 4096  # integers a template may compute (2**4096 has 1,234 digits)
MAX_LIPSUM = 20  # paragraphs of lipsum()
TOO_COSTLY = "template too large or slow: "  # how a TemplateTooCostly message starts


class TemplateTooCostly(TemplateError):
    """The template would take too much time or memory to render; the message says which limit."""

    def __init__(self, detail: str) -> None:
        super().__init__(TOO_COSTLY + detail)
        self.detail = detail


class _Budget:
    """What one render may still spend; a step past any limit raises TemplateTooCostly."""

    __slots__ = ("steps", "chars", "deadline")

    def __init__(self) -> None:
        self.steps, self.chars = 0, 0
        self.deadline = time.monotonic() + MAX_SECONDS

    def charge(self, steps: int = 1, chars: int = 0) -> None:
        self.steps += steps
        self.chars += chars
        if self.steps > MAX_STEPS:
            raise TemplateTooCostly(f"more than {MAX_STEPS:,} loop steps and calls")
        if self.chars > MAX_PRODUCED:
            raise TemplateTooCostly(f"more than {MAX_PRODUCED:,} characters of text")
        if time.monotonic() > self.deadline:
            raise TemplateTooCostly(f"rendering took more than {MAX_SECONDS:g} s")


_budget: ContextVar[_Budget | None] = ContextVar("template_budget", default=None)


def _charge(steps: int = 1, chars: int = 0) -> None:
    budget = _budget.get()
    if budget is not None:  # outside render() (e.g. compiling) nothing is counted
        budget.charge(steps, chars)


def _size(value: Any, depth: int = 0) -> int:
    """About how many characters `value` becomes as text, without building that text."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return value.bit_length() // 3 + 1
    if isinstance(value, list | tuple | set | frozenset | dict) and depth < 4:
        if len(value) > MAX_STEPS:
            return MAX_PRODUCED + 1
        items = value.items() if isinstance(value, dict) else ((item, "") for item in value)
        return sum(_size(k, depth + 1) + _size(v, depth + 1) + 2 for k, v in items)
    return 16


def _refuse_over(size: int, limit: int, what: str) -> None:
    if size > limit:
        raise TemplateTooCostly(f"{what} would be {size:,}; at most {limit:,}")


_PERCENT_SPEC = re.compile(r"%(?:\([^)]*\))?[#0\- +]*(\*|\d+)?(?:\.(\*|\d+))?")


def _check_percent_format(fmt: str) -> None:
    """Widths and precisions of a `%` format are bounded; `*` (a width from the data) is refused."""
    for width, precision in _PERCENT_SPEC.findall(fmt):
        for number in (width, precision):
            if number == "*":
                raise TemplateTooCostly("a format width taken from the data (*)")
            if number:
                _refuse_over(int(number), MAX_WIDTH, "a format width")


def _check_brace_format(fmt: str) -> None:
    """Widths and precisions of a `str.format` pattern are bounded; nested fields are refused."""
    try:
        parsed = list(string.Formatter().parse(fmt))
    except ValueError:
        return  # str.format raises its own error for a broken pattern
    for _literal, _field, spec, _conversion in parsed:
        if spec and "{" in spec:
            raise TemplateTooCostly("a format width taken from the data ({})")
        for number in re.findall(r"\d+", spec or ""):
            _refuse_over(int(number), MAX_WIDTH, "a format width")


def _check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse `*`, `**`, `%` and `+` whose result would be huge, before computing it."""
    ints = all(isinstance(x, int) and not isinstance(x, bool) for x in (left, right))
    if operator == "**" and ints and abs(left) > 1 and right > 0:
        _refuse_over(math.ceil(right * math.log2(abs(left))), MAX_INT_BITS, "a number's size in bits")
    elif operator == "*" and ints:
        _refuse_over(left.bit_length() + right.bit_length(), MAX_INT_BITS, "a number's size in bits")
    elif operator == "*":
        for times, seq in ((left, right), (right, left)):
            if isinstance(times, int) and isinstance(seq, str | list | tuple):
                _refuse_over(max(times, 0) * max(_size(seq), 1), MAX_PRODUCED, "a repeated text's length")
    elif operator == "%" and isinstance(left, str):
        _check_percent_format(left)
    elif operator == "+" and isinstance(left, str | list | tuple) and isinstance(right, str | list | tuple):
        _refuse_over(_size(left) + _size(right), MAX_PRODUCED, "a joined text's length")


def _check_str_method(owner: str, name: str, args: tuple, kwargs: dict) -> None:
    """The str methods that can make a text much longer than their inputs."""
    values = list(args) + list(kwargs.values())
    if name in ("ljust", "rjust", "center", "zfill", "expandtabs") and values:
        if isinstance(values[0], int):
            width = values[0] * (owner.count("\t") if name == "expandtabs" else 1)
            _refuse_over(width, MAX_OUTPUT, "a padded text's length")
    elif name == "replace" and len(values) >= 2 and all(isinstance(v, str) for v in values[:2]):
        found = owner.count(values[0]) if values[0] else len(owner) + 1
        _refuse_over(len(owner) + found * len(values[1]), MAX_PRODUCED, "the replaced text's length")
    elif name in ("format", "format_map"):
        _check_brace_format(owner)


def _checked_join(items: Any, separator: Any) -> list:
    items = list(items)
    _refuse_over(len(items), MAX_STEPS, "the number of joined items")
    _refuse_over(sum(_size(item) for item in items) + len(items) * _size(separator), MAX_PRODUCED,
                 "a joined text's length")
    return items


class _LimitedSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with the cost checks of this module on operators and calls."""

    intercepted_binops = frozenset({"*", "**", "%", "+"})

    def call_binop(self, context, operator, left, right):
        _check_binop(operator, left, right)
        result = super().call_binop(context, operator, left, right)
        _charge(1, _size(result) if isinstance(result, str) else 0)
        return result

    def call(__self, __context, __obj, *args, **kwargs):  # noqa: N805 - Jinja's own signature
        _charge()
        target = getattr(__obj, "__wrapped__", __obj)  # str.format comes wrapped by the sandbox
        owner = getattr(target, "__self__", None)
        if isinstance(owner, str):
            name = getattr(target, "__name__", "")
            _check_str_method(owner, name, args, kwargs)
            if name == "join" and args:
                args = (_checked_join(args[0], owner), *args[1:])
        result = super().call(__context, __obj, *args, **kwargs)
        if isinstance(result, str):
            _charge(0, len(result))
        return result

    def _parse(self, source, name, filename):
        tree = super()._parse(source, name, filename)
        _instrument(tree)
        return tree


@pass_context
def _counted_steps(_context, iterable):
    """A loop's iterable that charges one step per item."""
    for item in iterable:
        _charge()
        yield item


@pass_context
def _counted_text(_context, value):
    """A piece of output (or a `~` result) charged by its length; passed on unchanged."""
    _charge(1, _size(value))
    return value


def _instrument(tree: nodes.Template) -> None:
    """Route every loop, output piece and `~` through the budget (contextfilters: never const-folded)."""
    for loop in tree.find_all(nodes.For):
        loop.iter = nodes.Filter(loop.iter, "_counted_steps", [], [], None, None, lineno=loop.lineno)
    for concat in list(tree.find_all(nodes.Concat)):
        concat.nodes = [nodes.Filter(node, "_counted_text", [], [], None, None, lineno=concat.lineno)
                        for node in concat.nodes]
    for output in tree.find_all(nodes.Output):
        output.nodes = [nodes.Filter(node, "_counted_text", [], [], None, None, lineno=output.lineno)
                        for node in output.nodes]


_SIZE_ARGUMENTS = {"center", "indent", "batch", "slice", "tojson", "wordwrap", "truncate"}


def _indent_ok(value: str, rest: tuple, kwargs: dict) -> None:
    width = rest[0] if rest else kwargs.get("width", 4)
    width = width if isinstance(width, int) else len(str(width))
    _refuse_over(len(value) + (value.count("\n") + 1) * width, MAX_PRODUCED, "the indented text's length")


def _wordwrap_ok(value: str, rest: tuple, kwargs: dict) -> None:
    wrap = kwargs.get("wrapstring") or (rest[2] if len(rest) > 2 else None) or "\n"
    _refuse_over((len(value) + 1) * len(str(wrap)), MAX_PRODUCED, "the wrapped text's length")


_TEXT_CHECKS = {
    "indent": _indent_ok,
    "wordwrap": _wordwrap_ok,
    "format": lambda value, rest, kwargs: _check_percent_format(value),
    "replace": lambda value, rest, kwargs: len(rest) < 2 or _check_str_method(
        value, "replace", tuple(map(str, rest[:2])), {}),
}


def _check_filter(name: str, value: Any, rest: tuple, kwargs: dict) -> None:
    """Refuse a filter call whose size arguments (or effect on this text) are too large."""
    if name in _SIZE_ARGUMENTS:
        for number in list(rest) + list(kwargs.values()):
            if isinstance(number, int) and not isinstance(number, bool):
                _refuse_over(number, MAX_WIDTH, f"the size given to {name}")
    if name in _TEXT_CHECKS and isinstance(value, str):
        _TEXT_CHECKS[name](value, rest, kwargs)


def _guarded_filter(name: str, function):
    """A built-in filter with its size arguments checked first and its result charged."""
    # A filter marked pass_context/pass_eval_context/pass_environment gets that object first.
    at = 0 if getattr(function, "jinja_pass_arg", None) is None else 1

    @wraps(function)
    def guarded(*args, **kwargs):
        value, rest = (args[at] if len(args) > at else None), args[at + 1:]
        _check_filter(name, value, rest, kwargs)
        if name == "join" and value is not None:
            separator = rest[0] if rest else kwargs.get("d", "")
            args = (*args[:at], _checked_join(value, separator), *args[at + 1:])
        result = function(*args, **kwargs)
        if isinstance(result, str):
            _charge(1, len(result))
        return result

    return guarded


def _lipsum(n: int = 5, html: bool = True, min: int = 20, max: int = 100) -> str:  # noqa: A002
    _refuse_over(n, MAX_LIPSUM, "lipsum's paragraphs")
    _refuse_over(max, 1000, "lipsum's words per paragraph")
    return generate_lorem_ipsum(n, html, min, max)


_env = _LimitedSandbox(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
_env.filters = {name: _guarded_filter(name, f) for name, f in _env.filters.items()}
_env.filters.update(_counted_steps=_counted_steps, _counted_text=_counted_text)
_env.globals["lipsum"] = _lipsum


@dataclass(frozen=True)
class TemplateProblem:
    variant: str
    part: str  # "subject" or "body"
    message: str
    email: str = ""
    undefined: bool = False  # an unknown merge field (depends on the lead), not bad syntax
    too_costly: bool = False  # over the render budget (TemplateTooCostly)

    def __str__(self) -> str:
        who = f" ({self.email})" if self.email else ""
        return f"{self.variant}/{self.part}{who}: {self.message}"


def lead_context(lead: Any, unsubscribe_url: str, signature: str = "") -> dict[str, Any]:
    """The merge fields a template sees for one lead, `signature` being its mailbox's."""
    fields = dict(lead.fields or {})
    context: dict[str, Any] = {key: value for key, value in fields.items() if key.isidentifier()}
    context.update(
        email=lead.email,
        first_name=lead.first_name or "",
        last_name=lead.last_name or "",
        company=lead.company or "",
        tags=lead.tags or "",
        fields=fields,
        unsubscribe_url=unsubscribe_url,
        # The operator's plain text, put in as it is: the body is text/plain (no HTML part
        # to escape for) and a value is never rendered again, so braces in it stay text.
        # Always defined ("" without a mailbox), so `{{ signature }}` passes validation.
        signature=signature or "",
    )
    return context


@lru_cache(maxsize=512)
def _compiled(source: str) -> Template:
    # Compiling is most of a render's cost; a campaign has a handful of distinct sources.
    return _env.from_string(source)


def render(source: str, context: dict[str, Any]) -> str:
    """Render one template string within the cost limits; raises jinja2.TemplateError on any problem."""
    token = _budget.set(_Budget())
    try:
        result = _compiled(source).render(context)
    except RecursionError as exc:  # a macro calling itself: Python's own stack limit stopped it
        raise TemplateTooCostly("macros nested too deeply") from exc
    except MemoryError as exc:
        raise TemplateTooCostly("out of memory") from exc
    finally:
        _budget.reset(token)
    _refuse_over(len(result), MAX_OUTPUT, "the rendered text's length")
    return result


def check(letter: str, subject: str, body: str, context: dict[str, Any],
          email: str = "") -> list[TemplateProblem]:
    """Problems rendering one variant's subject and body in one context (empty if fine)."""
    problems = []
    for part, source in (("subject", subject), ("body", body)):
        try:
            render(source, context)
        except TemplateError as exc:
            problems.append(TemplateProblem(letter, part, str(exc), email, isinstance(exc, UndefinedError),
                                            isinstance(exc, TemplateTooCostly)))
        except (ArithmeticError, TypeError, ValueError, LookupError) as exc:
            # e.g. {{ 1 + "a" }} or {{ 10.0 ** 999 }}: the template's fault, shown at its field
            problems.append(TemplateProblem(letter, part, f"{type(exc).__name__}: {exc}", email))
    return problems
