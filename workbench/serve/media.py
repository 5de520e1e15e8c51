"""Media types as HTTP (RFC 9110) has them: Content-Type parsing and Accept negotiation.

The SageMaker archive's ``inference.py`` carries its own copy of these rules (it runs without the
package); the tests keep the two answering every Accept header alike.
"""

from __future__ import annotations

import codecs
import re

from workbench.errors import WorkbenchError

JSON, CSV, NPY = "application/json", "text/csv", "application/x-npy"
JSONLINES, JSONL = "application/jsonlines", "application/jsonl"  # JSON Lines: the same, by both its names
SENT = f"{JSON}, {JSONLINES}, {CSV} or {NPY}"

TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+")
QVALUE = re.compile(r"0(\.\d{0,3})?|1(\.0{0,3})?")

# What /invocations writes, in the order preferred where the client's q values tie:
# (media type, its parameters, the Content-Type sent).
Offer = tuple[str, dict[str, str], str]
OFFERS: tuple[Offer, ...] = (
    (JSON, {"charset": "utf-8"}, JSON),
    (CSV, {"charset": "utf-8", "header": "absent"}, f"{CSV}; charset=utf-8"),
    (CSV, {"charset": "utf-8", "header": "present"}, f"{CSV}; charset=utf-8; header=present"),
    (NPY, {}, NPY),
    (JSONLINES, {"charset": "utf-8"}, JSONLINES),
    (JSONL, {"charset": "utf-8"}, JSONL),
)


class RequestError(WorkbenchError):
    """A client's mistake, answered with ``status`` and ``{"error": message}``; the server stays up."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def shown(value: object, width: int = 40) -> str:
    """A client's value in a message, cut short: an error must not echo a megabyte back."""
    text = repr(value)
    return text if len(text) <= width else text[: width - 3] + "..."


def columns_missing(absent: list[str], said: str, hint: str) -> RequestError:
    """A 400 naming the first of the ``absent`` columns in ``said`` (at its ``{column}``) and counting
    the others: the one name a client needs to mend the request, without a list of hundreds."""
    more = f" (and {len(absent) - 1} more)" if len(absent) > 1 else ""
    return RequestError(400, said.format(column=repr(absent[0])) + f"{more}; {hint}")


def _split(text: str, sep: str) -> list[str]:
    """The parts of ``text`` between ``sep`` outside double-quoted strings."""
    parts, current, quoted, escaped = [], [], False, False
    for ch in text:
        if escaped:
            escaped = False
        elif quoted and ch == "\\":
            escaped = True
        elif ch == '"':
            quoted = not quoted
        elif ch == sep and not quoted:
            parts.append("".join(current))
            current = []
            continue
        current.append(ch)
    parts.append("".join(current))
    return parts


def media_type(value: str, header: str) -> tuple[str, list[tuple[str, str]]]:
    """``type/subtype`` lowercased and the parameters as (lowercased name, value) pairs, in order."""
    head, *rest = _split(value, ";")
    kind = head.strip().lower()
    main, _, sub = kind.partition("/")
    if not (TOKEN.fullmatch(main) and TOKEN.fullmatch(sub)):
        raise RequestError(400, f"{header} {value.strip()!r} is not a media type (type/subtype)")
    params = []
    for part in rest:
        if not part.strip():
            continue
        name, eq, text = part.partition("=")
        name, text = name.strip().lower(), text.strip()
        if not (eq and TOKEN.fullmatch(name) and text):
            raise RequestError(400, f"{header} {value.strip()!r}: parameter {part.strip()!r} is not name=value")
        if len(text) >= 2 and text[0] == text[-1] == '"':
            text = re.sub(r"\\(.)", r"\1", text[1:-1])
        params.append((name, text))
    return kind, params


def content_type(value: str | None) -> tuple[str, dict[str, str]]:
    """The request's media type and its parameters; a request must say what it carries."""
    if not value or not value.strip():
        raise RequestError(415, f"the request has no Content-Type; send {SENT}")
    kind, params = media_type(value, "Content-Type")
    return kind, dict(params)


def _same(name: str, asked: str, offered: str) -> bool:
    if name == "charset":
        try:
            return codecs.lookup(asked).name == codecs.lookup(offered).name
        except LookupError:
            return False
    return asked.lower() == offered.lower()


def negotiate(accept: str | None, offers: tuple[Offer, ...] = OFFERS) -> Offer:
    """The offer the Accept header ranks highest: each offer takes the q of the most specific range
    matching it (a range's parameters must all match the offer's); q=0 refuses; ties go to the first
    offer. No Accept, or an empty one, accepts anything; nothing acceptable is a 406."""
    if accept is None or not accept.strip():
        return offers[0]
    ranges = []
    for element in _split(accept, ","):
        if not element.strip():
            continue
        kind, params = media_type(element, "Accept")
        own, q = {}, 1.0
        for name, text in params:
            if name == "q":
                if not QVALUE.fullmatch(text):
                    raise RequestError(400, f"Accept {element.strip()!r}: q must be a number from 0 to 1")
                q = float(text)
                break  # what follows q are extensions, not parameters of the media type
            own[name] = text
        ranges.append((kind, own, q))
    best, best_q = None, 0.0
    for offer in offers:
        offered_kind, offered = offer[0], offer[1]
        matched: tuple[tuple[int, int], float] | None = None
        for kind, own, q in ranges:
            main, sub = kind.split("/")
            if kind == offered_kind:
                level = 2
            elif sub == "*" and (main == "*" or offered_kind.startswith(main + "/")):
                level = 0 if main == "*" else 1
            else:
                continue
            if not all(name in offered and _same(name, text, offered[name]) for name, text in own.items()):
                continue
            if matched is None or (level, len(own)) > matched[0]:
                matched = ((level, len(own)), q)
        if matched and matched[1] > best_q:
            best, best_q = offer, matched[1]
    if best is None:
        kinds = ", ".join(dict.fromkeys(offer[0] for offer in offers))
        raise RequestError(406, f"Accept {accept.strip()!r} matches nothing served here; ask for {kinds}")
    return best


def invalid_byte(exc: UnicodeDecodeError) -> str:
    """Which byte does not decode, and where: ``byte 0xe9 at offset 246``."""
    return f"byte {exc.object[exc.start]:#04x} at offset {exc.start}"


def text_of(body: bytes, charset: str | None) -> str:
    """The body as text in the charset the Content-Type names (UTF-8 when it names none)."""
    charset = charset or "utf-8"
    try:
        text = body.decode(charset)
    except LookupError:
        raise RequestError(415, f"charset {charset!r} is unknown; send UTF-8") from None
    except UnicodeDecodeError as exc:
        raise RequestError(400, f"the body is not {charset} text ({invalid_byte(exc)})") from None
    return text.lstrip("\ufeff")
