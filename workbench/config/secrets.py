"""Keeping passwords out of messages, notebooks and reports: the one place URLs are masked.

It imports nothing of workbench, so parameters, sources, tracking and publishing all use it.
"""

from __future__ import annotations

import re
from typing import Any

_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")


def mask(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ``***``.

    Works on a bare URL (``postgresql://u:***@h/db``) and on a message that quotes one.
    """
    return _PASSWORD.sub(r"\1***@", text)


def holds_password(text: str) -> bool:
    """Whether ``text`` holds a URL with a password (``scheme://user:password@host``) anywhere."""
    return _PASSWORD.search(text) is not None


def mask_value(value: Any) -> Any:
    """A parameter's value with every URL in it masked: text, and the text inside mappings and lists
    (a SQL source ``{url, query}``). Parameters are refused with a password in them; this keeps one
    out of what is written even so (runs recorded before that refusal, a value set by hand)."""
    if isinstance(value, str):
        return mask(value)
    if isinstance(value, dict):
        return {k: mask_value(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [mask_value(v) for v in value]
    return value
