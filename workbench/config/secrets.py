"""Keeping passwords out of messages, notebooks and reports: the one place URLs are masked.

It imports nothing of workbench, so parameters, sources, tracking and publishing all use it.
"""

from __future__ import annotations

import re

_PASSWORD = re.compile(r"(://[^/@:\s]*:)[^/@\s]*@")


def mask(text: str) -> str:
    """``text`` with the password of any URL in it replaced by ``***``.

    Works on a bare URL (``postgresql://u:***@h/db``) and on a message that quotes one.
    """
    return _PASSWORD.sub(r"\1***@", text)
