"""The one rule that masks database passwords in what sagalab prints.

Every message that may carry a database URL goes through `redacted`: StoreError builds its
message with it, `stores.shown` and the worker's logs show `--db` with it, the CLI's `fail`
and the API's start-up error line pass through it. Pure: `re` only.

What is masked, erring towards masking too much rather than leaking a byte:

- the password of a URL's userinfo, `scheme://user:SECRET@host`: everything from the first
  ':' after `user` to the LAST '@' that follows it on the same word, so a password holding
  '/', '@', '?' or ':' is masked whole (`postgresql://u:p/ss@h/db`, `postgresql://u:p@ss@h`);
- `password=SECRET` in a query string or a libpq keyword/value string, up to the next '&',
  space or quote.
"""

from __future__ import annotations

import re

__all__ = ["MASK", "redacted", "secrets_in"]

MASK = "***"

# scheme:// then the user (no ':', '/', '@' or space), ':' then the longest run without
# white space that ends at an '@': a greedy match, so the last '@' of the word is the end.
_USERINFO = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.-]*:/+[^\s:/@]*:)[^\s]*@")
_PASSWORD_PARAM = re.compile(r"(?P<head>\bpassword\s*=\s*)(?:'[^']*'|[^&\s'\"]+)", re.IGNORECASE)


def redacted(text: str, *, url: str | None = None) -> str:
    """`text` with every database password in it replaced by `***` (see the module doc).

    With `url` (the URL a driver's message is about), the passwords found in it are also
    masked wherever `text` quotes them on their own (a driver naming a bad token).
    """
    for secret in secrets_in(url) if url is not None else ():
        text = text.replace(secret, MASK)
    text = _USERINFO.sub(lambda m: f"{m['head']}{MASK}@", text)
    return _PASSWORD_PARAM.sub(lambda m: f"{m['head']}{MASK}", text)


def secrets_in(url: str) -> list[str]:
    """The passwords `url` carries (what `redacted` masks in it), longest first."""
    found = [m[0][len(m["head"]) : -1] for m in _USERINFO.finditer(url)]
    found += [m[0][len(m["head"]) :] for m in _PASSWORD_PARAM.finditer(url)]
    return sorted((s for s in found if s and s != MASK), key=len, reverse=True)
