"""Templates per notification type and locale (``templates/<locale>/<type>.txt``), rendered with
Jinja2. A template's first line is ``Subject: ...``, then a blank line, then the body: paragraphs
separated by blank lines, one sentence or list item (``- ...``) per line. The body is then laid out
twice by the locale's ``layout/message.txt`` and ``layout/message.html`` (the shop's name and sign-off; the HTML
escaped, its links made links): the plain and HTML parts of one e-mail. Any missing template or
field is a ``RenderError`` that says which: never half a message."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import jinja2
from markupsafe import Markup, escape

LINK = re.compile(r"https?://[^\s<>\"]+[^\s<>\".,;:!?)]")


class RenderError(Exception):
    """The request cannot become a message: no template for it, or a field the template needs is missing."""


@dataclass(frozen=True)
class Shop:
    """Who the messages come from: ``ORDEROPS_SHOP_NAME`` and ``ORDEROPS_SHOP_SIGNATURE`` (the
    sign-off's last line; empty: the locale's layout says "The <name> team" in its language)."""

    name: str = "orderops demo shop"
    signature: str = ""


@dataclass(frozen=True)
class Rendered:
    subject: str
    body: str  # the plain text part, signed
    locale: str
    html: str = ""  # the HTML part of the same message


def linked(line: str) -> Markup:
    """A line of the body for HTML: escaped, its web addresses made links."""
    out, at = [], 0
    for found in LINK.finditer(line):
        out += [escape(line[at:found.start()]), Markup('<a href="{0}">{0}</a>').format(found.group())]
        at = found.end()
    return Markup("").join([*out, escape(line[at:])])


def paragraphs(body: str) -> list[dict]:
    """The body's paragraphs for the HTML layout: each its lines, and whether it is a list."""
    found = []
    for block in body.strip().split("\n\n"):
        lines = [line for line in block.splitlines() if line.strip()]
        if lines:
            listed = all(line.startswith("- ") for line in lines)
            found.append({"list": listed, "lines": [line.removeprefix("- ") if listed else line for line in lines]})
    return found


class Templates:
    def __init__(self, directory: Path, default_locale: str = "en", shop: Shop = Shop()) -> None:
        self.directory, self.default_locale, self.shop = directory, default_locale, shop
        loader = jinja2.FileSystemLoader(str(directory))
        self.env = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, autoescape=False,
                                      keep_trailing_newline=False, trim_blocks=True, lstrip_blocks=True)
        self.env.filters["day"] = lambda moment: f"{moment:%a %d %b}" if moment else "a date we do not know yet"
        self.env.filters["money"] = lambda m: f"{m['amount']:.2f} {m['currency']}"
        self.html = jinja2.Environment(loader=loader, undefined=jinja2.StrictUndefined, autoescape=True,
                                       trim_blocks=True, lstrip_blocks=True)
        self.html.filters["linked"] = linked

    def _find(self, env: jinja2.Environment, locale: str, name: str) -> tuple[jinja2.Template, str]:
        """The template ``name`` of ``locale``, else of its language, else of the default locale; and
        the locale it was found for."""
        tried = []
        for candidate in dict.fromkeys([locale, locale.split("-")[0], self.default_locale]):
            path = f"{candidate}/{name}"
            tried.append(path)
            try:
                return env.get_template(path), candidate
            except jinja2.TemplateNotFound:
                continue
        raise RenderError(f"no template {name} (looked for {', '.join(tried)} in {self.directory})")

    def render(self, notice_type: str, locale: str, context: dict) -> Rendered:
        try:
            template, found = self._find(self.env, locale, f"{notice_type}.txt")
        except RenderError as missing:
            raise RenderError(f"no template for notification type {notice_type!r}: {missing}") from None
        name = template.name or notice_type
        text = self._run(name, lambda: template.render(**context, shop=self.shop))
        head, _, body = text.partition("\n\n")
        if not head.startswith("Subject: "):
            raise RenderError(f"template {name} must start with 'Subject: ' and a blank line")
        subject, body = head.removeprefix("Subject: ").strip(), body.strip()
        laid = {"subject": subject, "body": body, "shop": self.shop, "locale": found}
        plain, _ = self._find(self.env, found, "layout/message.txt")
        html, _ = self._find(self.html, found, "layout/message.html")
        return Rendered(subject, self._run(plain.name or "", lambda: plain.render(**laid)).strip() + "\n", found,
                        self._run(html.name or "", lambda: html.render(**laid, paragraphs=paragraphs(body))))

    @staticmethod
    def _run(name: str, render: Callable[[], str]) -> str:
        try:
            return render()
        except jinja2.UndefinedError as exc:
            raise RenderError(f"template {name} needs a value the request does not carry: {exc.message}") from exc
        except (TypeError, ValueError, KeyError) as exc:
            raise RenderError(f"template {name} failed on the request's data: {type(exc).__name__}: {exc}") from exc


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
