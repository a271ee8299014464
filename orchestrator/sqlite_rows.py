"""The SQLite store's hot-path INSERTs: a None is a NULL in the text, several rows go in one.

Why not bind None: Python's sqlite3 binds an int, float or str parameter at once but sends
every other value, None included, through its adapter protocol before binding it as NULL (a
registry lookup, then `__adapt__` looked up on the protocol type: a failed lookup that formats
an AttributeError message, then `__conform__` on the value). That is about 3,300 instructions
per None, and a journal row has eight to ten of them: a 3-step saga bound about 66, a tenth
of its instructions. A `NULL` written in the statement's text costs nothing per row.

So an INSERT's text depends on which of its values are None. `RowInserts` builds each such
text once and keeps it (bounded), and the connection's statement cache keeps its prepared
form (`STATEMENT_CACHE`). Several rows go in one multi-row INSERT (one statement per commit
instead of one per row); a larger batch is cut into statements of `MAX_ROWS` rows, so that
the texts stay few and short.

Values every row of a statement shares (a journal's saga id and trace id) can be bound once:
`shared` columns come first in each row as `?1`, `?2`..., and are passed once per statement.
Python's sqlite3 binds each value with its own call (and SQLite copies each text), so a
commit's second row then costs two binds fewer.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["MAX_ROWS", "STATEMENT_CACHE", "RowInserts"]

#: Rows per multi-row INSERT at most (a batch of more is cut into several statements).
MAX_ROWS = 4
#: Prepared statements a write connection keeps (sqlite3's `cached_statements`, default 128):
#: the INSERT texts by null pattern come on top of the store's other statements.
STATEMENT_CACHE = 512


class RowInserts:
    """INSERT statements into `table`'s `columns`, one text per pattern of None values.

    `statements(rows)` gives (sql, parameters) pairs: the rows' values that are not None,
    bound by position, each None written as NULL in the text. Rows are tuples of
    `len(columns)` values. At most `limit` texts are kept; past that, texts are built
    each time (correct, only slower).
    """

    def __init__(
        self,
        table: str,
        columns: Sequence[str],
        *,
        shared: Sequence[str] = (),
        limit: int = 256,
    ) -> None:
        self.width = len(columns)
        self._shared = len(shared)
        self._head = f"INSERT INTO {table} ({', '.join([*shared, *columns])}) VALUES "
        self._limit = limit
        self._texts: dict[tuple[bool, ...], str] = {}

    def statements(
        self, rows: Sequence[tuple[Any, ...]], shared: Sequence[Any] = ()
    ) -> Iterator[tuple[str, list[Any]]]:
        """(sql, parameters) for `rows`, at most `MAX_ROWS` rows per statement, in order."""
        for start in range(0, len(rows), MAX_ROWS):
            yield self.statement(rows[start : start + MAX_ROWS], shared)

    def statement(
        self, rows: Sequence[tuple[Any, ...]], shared: Sequence[Any] = ()
    ) -> tuple[str, list[Any]]:
        """(sql, parameters) inserting all of `rows` (at least one) in one statement, each
        row after the `shared` values (one per shared column, none of them None)."""
        if len(shared) != self._shared:
            raise ValueError(f"every statement needs {self._shared} shared values")
        # Extending a list by each row: four times cheaper than list(chain.from_iterable(...))
        # for a commit's two or three rows (measured).
        values: list[Any] = []
        for row in rows:
            values.extend(row)
        if len(values) != self.width * len(rows):
            raise ValueError(f"every row needs {self.width} values")
        # List comprehensions: 3.7 times cheaper here than map/filter with a partial of
        # operator.is_. The key's length also says how many rows there are.
        nulls = tuple([value is None for value in values])
        sql = self._texts.get(nulls)
        if sql is None:
            sql = self._text(nulls)
            if len(self._texts) < self._limit:
                self._texts[nulls] = sql
        return sql, [*shared, *[value for value in values if value is not None]]

    def _text(self, nulls: tuple[bool, ...]) -> str:
        width, first = self.width, self._shared + 1
        # With shared values: ?1..?k in every row, the row's own values numbered from ?k+1.
        shared = [f"?{n}" for n in range(1, first)]
        numbers = iter(range(first, first + len(nulls)))

        def value(null: bool) -> str:
            return "NULL" if null else f"?{next(numbers)}" if shared else "?"

        rows = (
            "(" + ", ".join([*shared, *[value(null) for null in nulls[i : i + width]]]) + ")"
            for i in range(0, len(nulls), width)
        )
        return self._head + ", ".join(rows)
