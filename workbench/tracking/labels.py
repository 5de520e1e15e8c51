"""What people call their runs: a name, tags (``key=value``) and a note, checked before anything is
recorded, so a mistyped ``--tag`` costs no run."""

from __future__ import annotations

from workbench.errors import ParameterError

LONGEST = 128  # the tracking tables' limit for a name and a tag key


def run_name(text: str) -> str:
    """A run's name as given (``--name``), without surrounding spaces; one line, not empty."""
    name = text.strip()
    if not name:
        raise ParameterError(f"--name {text!r}: a run's name cannot be empty; e.g. --name lr-sweep")
    if len(name) > LONGEST:
        raise ParameterError(f"--name {name[:20]!r}...: {len(name)} characters; a name holds {LONGEST} at most")
    if not name.isprintable():
        raise ParameterError(f"--name {text!r}: a name is one line of printable text")
    return name


def tag(text: str) -> tuple[str, str]:
    """``key=value`` (``--tag``, ``runs tag``) as a pair; the key a word without spaces, the value any text."""
    key, sep, value = text.partition("=")
    key = key.strip()
    if not sep or not key or not value.strip():
        raise ParameterError(f"--tag {text!r}: expected KEY=VALUE, e.g. --tag team=vision")
    if len(key) > LONGEST or not key.isprintable() or " " in key:
        raise ParameterError(f"--tag {text!r}: a tag's key is one word of at most {LONGEST} characters")
    if not value.isprintable():
        raise ParameterError(f"--tag {text!r}: a tag's value is one line of printable text")
    return key, value.strip()


def tags(texts: list[str] | None) -> dict[str, str]:
    """Several ``key=value`` texts as a mapping; a key given twice with two values is refused."""
    found: dict[str, str] = {}
    for text in texts or ():
        key, value = tag(text)
        if found.get(key, value) != value:
            raise ParameterError(f"--tag {text!r}: tag {key} is given twice ({found[key]!r} and {value!r}); keep one")
        found[key] = value
    return found
