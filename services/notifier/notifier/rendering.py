"""Templates per notification type and locale (``templates/<locale>/<type>.txt``), rendered with
Jinja2. A template's first line is ``Subject: ...``, then a blank line, then the body. Any missing
template or field is a ``RenderError`` that says which: never half a message."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import jinja2


class RenderError(Exception):
    """The request cannot become a message: no template for it, or a field the template needs is missing."""


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str
    locale: str


class Templates:
    def __init__(self, directory: Path, default_locale: str = "en") -> None:
        self.directory, self.default_locale = directory, default_locale
        self.env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(directory)), undefined=jinja2.StrictUndefined,
                                      autoescape=False, keep_trailing_newline=False, trim_blocks=True,
                                      lstrip_blocks=True)
        self.env.filters["day"] = lambda moment: f"{moment:%a %d %b}" if moment else "a date we do not know yet"
        self.env.filters["money"] = lambda m: f"{m['amount']:.2f} {m['currency']}"

    def render(self, notice_type: str, locale: str, context: dict) -> Rendered:
        tried = []
        for candidate in dict.fromkeys([locale, locale.split("-")[0], self.default_locale]):
            name = f"{candidate}/{notice_type}.txt"
            tried.append(name)
            try:
                template = self.env.get_template(name)
            except jinja2.TemplateNotFound:
                continue
            try:
                text = template.render(**context)
            except jinja2.UndefinedError as exc:
                raise RenderError(f"template {name} needs a value the request does not carry: {exc.message}") from exc
            except (TypeError, ValueError, KeyError) as exc:
                raise RenderError(f"template {name} failed on the request's data: {type(exc).__name__}: {exc}") from exc
            head, _, body = text.partition("\n\n")
            if not head.startswith("Subject: "):
                raise RenderError(f"template {name} must start with 'Subject: ' and a blank line")
            return Rendered(head.removeprefix("Subject: ").strip(), body.strip() + "\n", candidate)
        raise RenderError(f"no template for notification type {notice_type!r} (looked for {', '.join(tried)} "
                          f"in {self.directory})")


def context(requests: tuple[dict, ...]) -> dict:
    """What templates see: the first request's fields, and every merged request as ``requests``."""
    payloads = [r["payload"] for r in requests]
    first = payloads[0]
    return {
        **first,
        "order_id": first["facts"].get("order_id", ""),
        "requests": payloads,
        "merged": len(payloads) > 1,
        "lines": merged_claims(payloads),
        "amounts": [a for p in payloads for a in p["amounts"]],
    }


def merged_claims(payloads: list[dict]) -> list[dict]:
    """The union of the requests' line claims: per line, quantities in these parcels add up; the
    rest (shipped, backordered, ...) is the latest request's truth."""
    merged: dict[str, dict] = {}
    for payload in payloads:
        for claim in payload["lines"]:
            previous = merged.get(claim["line_id"])
            merged[claim["line_id"]] = {**claim, "quantity_in_this_shipment": claim["quantity_in_this_shipment"] + (
                previous["quantity_in_this_shipment"] if previous else 0)}
    return list(merged.values())
