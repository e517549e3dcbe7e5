"""Merge-field templates: Jinja in its sandbox, with unknown fields as errors.

StrictUndefined turns `{{ frist_name }}` into an error instead of an empty string, and
the sandbox stops templates reaching Python internals. Campaigns are validated against
every enrolled lead before they start, so a bad field is caught before the first email.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from jinja2 import StrictUndefined, Template, TemplateError, UndefinedError
from jinja2.sandbox import SandboxedEnvironment

_env = SandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=True)
SAMPLE_UNSUBSCRIBE_URL = "https://example.invalid/u/preview"


@dataclass(frozen=True)
class TemplateProblem:
    variant: str
    part: str  # "subject" or "body"
    message: str
    email: str = ""
    undefined: bool = False  # an unknown merge field (depends on the lead), not bad syntax

    def __str__(self) -> str:
        who = f" ({self.email})" if self.email else ""
        return f"{self.variant}/{self.part}{who}: {self.message}"


def lead_context(lead: Any, unsubscribe_url: str) -> dict[str, Any]:
    """The merge fields a template sees for one lead."""
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
    )
    return context


@lru_cache(maxsize=512)
def _compiled(source: str) -> Template:
    # Compiling is most of a render's cost; a campaign has a handful of distinct sources.
    return _env.from_string(source)


def render(source: str, context: dict[str, Any]) -> str:
    """Render one template string; raises jinja2.TemplateError on any problem."""
    return _compiled(source).render(context)


def check(letter: str, subject: str, body: str, context: dict[str, Any],
          email: str = "") -> list[TemplateProblem]:
    """Problems rendering one variant's subject and body in one context (empty if fine)."""
    problems = []
    for part, source in (("subject", subject), ("body", body)):
        try:
            render(source, context)
        except TemplateError as exc:
            problems.append(TemplateProblem(letter, part, str(exc), email,
                                            isinstance(exc, UndefinedError)))
    return problems
