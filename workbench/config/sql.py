"""What a SQL source's query may be: one read-only SELECT, known before anything reaches a database.

A data source is only ever read, yet a query is text the database executes as it is: ``DROP TABLE
keep`` dropped the table before the pipeline could notice that no rows came back. So a query is
read here first, without a database: comments, string literals and quoted identifiers are set
aside, and what is left must be a single statement that starts with SELECT (or WITH ... SELECT)
and holds no word that changes data, its definition or its rights. Sources are also opened
read-only where the database allows it (see ``workbench.storage.sources``); this check is what
guards every other database, and it says what is wrong before a run starts.

It imports nothing of workbench, so the schema and the sources both use it.
"""

from __future__ import annotations

import re

# Words that make a statement inside a SELECT write: a data-modifying CTE (WITH d AS (DELETE ...
# RETURNING *) SELECT ...), SELECT ... INTO (a new table, or a file), DDL and rights. A statement of
# any other kind (COPY, CALL, PRAGMA, ...) is refused by its first word.
WRITING = frozenset(
    ["ALTER", "CREATE", "DELETE", "DROP", "GRANT", "INSERT", "INTO", "MERGE", "REVOKE", "TRUNCATE", "UPDATE", "UPSERT"]
)

# a comment, a quoted text or identifier, a dollar-quoted body (PostgreSQL): nothing in it is SQL
_SET_ASIDE = re.compile(
    r"""
      --[^\n]*                        # line comment
    | /\*.*?(?:\*/|\Z)                # block comment (an unclosed one runs to the end)
    | (?<![\w$])[eE]'(?:[^'\\]|\\.|'')*(?:'|\Z)  # E'...' with backslash escapes (PostgreSQL)
    | '(?:[^']|'')*(?:'|\Z)           # '...' with '' inside
    | "(?:[^"]|"")*(?:"|\Z)           # "quoted identifier"
    | `[^`]*(?:`|\Z)                  # `quoted identifier`
    | (\$\w*\$).*?(?:\1|\Z)           # $tag$ ... $tag$
    """,
    re.VERBOSE | re.DOTALL,
)
_WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*")


def _bare(query: str) -> str:
    """The query with comments, literals and quoted names replaced by a space."""
    return _SET_ASIDE.sub(" ", query)


def query_problem(query: str) -> str | None:
    """Why ``query`` may not be sent to a source database, or None for one read-only SELECT."""
    bare = _bare(query)
    statements = [part for part in bare.split(";") if part.strip()]
    if len(statements) > 1:
        return (
            f"the query holds {len(statements)} statements; a source runs exactly one SELECT "
            "(or WITH ... SELECT): remove the rest"
        )
    words = [word.upper() for word in _WORD.findall(bare)]
    if not words:
        return "the query holds no statement; write one SELECT (or WITH ... SELECT)"
    if words[0] not in ("SELECT", "WITH"):
        return (
            f"the query must be one read-only SELECT (or WITH ... SELECT), not {words[0]}; a source is only "
            "read: change data in the database itself"
        )
    writing = next((word for word in words if word in WRITING), None)
    if writing:
        return (
            f"the query must only read, and it holds {writing}; a source is only read: change data in the "
            'database itself (a column of that name goes in double quotes, "name")'
        )
    return None
