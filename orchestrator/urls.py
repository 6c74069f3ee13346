"""URL helpers: parse once, render with the password hidden everywhere a person can see it.

Masking is linear in the length of the text (every scan below moves forward or reuses what
an earlier scan found), so a 40,000-character driver error is masked as fast as a short one.
What is hidden:

- ``scheme://user:PASSWORD@host``: everything between ``://user:`` and the last ``@`` of
  that run of non-blank characters (a password holding ``@`` is hidden whole);
- ``password=PASSWORD`` (libpq style, any case, quoted or not);
- every password registered with :func:`register_secret`, wherever it appears, and the
  ones passed to :func:`mask_text` as ``secrets``;
- in a URL that could not be parsed, everything between ``://user:`` and its last ``@``.
"""
from __future__ import annotations

import re
from collections.abc import Iterable
from functools import lru_cache
from urllib.parse import quote

from sqlalchemy.engine import URL, make_url

MASK = "***"
_MIN_SECRET = 3  # shorter "passwords" would mask half of every message

_SCHEME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789+.-")
_USER = re.compile(r"[^:/@\s]*")
_BLANK = re.compile(r"\s")
_NOT_BLANK = re.compile(r"\S")
_PASSWORD_WORD = re.compile("password", re.IGNORECASE)


def parse_url(url: str) -> URL:
    """Parse a SQLAlchemy URL; a ValueError never shows the password."""
    try:
        return make_url(url)
    except Exception as exc:  # ArgumentError, ValueError (a bad port), anything else
        raise ValueError(f"not a valid database URL: {mask_unparsed_url(url)!r}") from exc


def mask_url(url: str | URL) -> str:
    """Render a URL with its password replaced by ***."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    if "@" in (unparsed_password(url) or ""):
        # It may parse, but at the wrong '@': part of the password would show as the host.
        return mask_unparsed_url(url)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # noqa: BLE001 - not a URL: hide what could be a password
        return mask_unparsed_url(url)


def mask_unparsed_url(url: str) -> str:
    """``url`` is meant as one URL but may not parse: hide everything between ``user:``
    and its last ``@`` (a password may hold spaces, ``@``, ``/``, ``#``...), then mask the
    rest as free text."""
    url = str(url)
    span = _password_span(url)
    if span is not None:
        url = url[: span[0]] + MASK + url[span[1] :]
    return mask_text(url)


def unparsed_password(url: str) -> str | None:
    """What stands between ``user:`` and the last ``@`` of ``url``: the password as a
    person meant it, even where the URL does not parse (a password holding ``@``, a
    mangled scheme); None when there is no ``user:...@``."""
    span = _password_span(url)
    return url[span[0] : span[1]] if span else None


def _password_span(url: str) -> tuple[int, int] | None:
    at = url.rfind("@")
    if at < 0:
        return None
    scheme = url.find("://", 0, at)
    if scheme >= 0:
        start = scheme + 3
        colon = start
        while colon < at and url[colon] not in ":/":
            colon += 1
        if colon < at and url[colon] == ":":
            return colon + 1, at
        return None
    # No scheme://: the user name starts after the last "//" (or at the start).
    slashes = url.rfind("//", 0, at)
    colon = url.find(":", slashes + 2 if slashes >= 0 else 0, at)
    return (colon + 1, at) if colon >= 0 else None


# Passwords of every URL the activated configurations hold; mask_text hides them wherever
# they appear, even in text that does not look like a URL (a driver echoing its DSN).
_known_secrets: set[str] = set()


def password_forms(password: str) -> set[str]:
    """The password as given and as it is written inside a rendered URL (percent-encoded)."""
    forms = {password}
    encoded = quote(password, safe=" +")
    if encoded != password:
        forms.add(encoded)
    return {form for form in forms if len(form) >= _MIN_SECRET}


def secrets_of(url: str | URL) -> set[str]:
    """Every form of the password of ``url`` (empty when there is none or it does not parse)."""
    found: set[str] = set()
    if isinstance(url, str):
        unparsed = unparsed_password(url)
        if unparsed:
            found |= password_forms(unparsed)
    try:
        password = (url if isinstance(url, URL) else make_url(url)).password
    except Exception:  # noqa: BLE001 - not a URL: no password to know
        return found
    return found | password_forms(str(password)) if password else found


def register_secret(url: str | URL | None = None, *, password: str | None = None) -> None:
    """Remember the password of ``url`` (or ``password`` itself) so that mask_text hides it
    from any text. This is process-wide state: :func:`orchestrator.config.activate` calls it."""
    if url is not None:
        _known_secrets.update(secrets_of(url))
    if password:
        _known_secrets.update(password_forms(password))


def mask_text(text: str, secrets: Iterable[str] = ()) -> str:
    """Hide passwords in free text (exception messages, driver errors, logs).

    Hides anything shaped like ``scheme://user:pw@`` or ``password=pw``, every password
    registered with :func:`register_secret`, and ``secrets``, wherever they appear.
    Linear in ``len(text)``.
    """
    if not text:
        return text
    known = frozenset(s for s in (*_known_secrets, *secrets) if len(s) >= _MIN_SECRET)
    if known:
        text = _secrets_pattern(known).sub(MASK, text)
    if "://" in text:
        text = _mask_url_passwords(text)
    return _mask_key_value_passwords(text)


@lru_cache(maxsize=64)
def _secrets_pattern(secrets: frozenset[str]) -> re.Pattern[str]:
    # Longest first, so that a password containing another one is hidden whole.
    return re.compile("|".join(re.escape(s) for s in sorted(secrets, key=len, reverse=True)))


def _mask_url_passwords(text: str, whole: bool = False) -> str:
    """``scheme://user:pw@`` -> ``scheme://user:***@``; the password runs to the last ``@``
    before the next blank (or the end of ``text`` when ``whole``). Linear: the end of the
    current run of non-blanks and its last ``@`` are found once per run, not per URL."""
    out: list[str] = []
    pos = 0  # text[:pos] is in out
    search = 0
    run_end = -1  # end of the run of non-blanks last measured (exclusive)
    run_last_at = -1  # the last "@" in that run, or -1
    n = len(text)
    while True:
        i = text.find("://", search)
        if i < 0:
            break
        search = i + 3
        if i == 0 or text[i - 1] not in _SCHEME_CHARS:
            continue
        colon = _USER.match(text, i + 3).end()  # type: ignore[union-attr]
        if colon >= n or text[colon] != ":":
            continue
        start = colon + 1
        if start > run_end or run_end < 0:
            if whole:
                run_end = n
            else:
                blank = _BLANK.search(text, start)
                run_end = blank.start() if blank else n
            run_last_at = text.rfind("@", start, run_end)
        at = run_last_at if run_last_at >= start else -1
        if at < 0:
            continue
        out.append(text[pos:start])
        out.append(MASK)
        pos = at
        search = at + 1
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)


def _mask_key_value_passwords(text: str) -> str:
    """``password = secret`` / ``PASSWORD='a b'`` -> ``password = ***``. Linear: a quote
    found missing once is not looked for again."""
    out: list[str] = []
    pos = 0
    search = 0
    n = len(text)
    no_quote_after: dict[str, int] = {}  # quote -> a position after which it never occurs
    while True:
        match = _PASSWORD_WORD.search(text, search)
        if match is None:
            break
        k = match.end()
        search = k
        while k < n and text[k].isspace():
            k += 1
        if k >= n or text[k] != "=":
            continue
        k += 1
        value = _NOT_BLANK.search(text, k)
        if value is None:
            break
        k = value.start()
        end = -1
        quote_char = text[k]
        if quote_char in "'\"" and k + 1 < no_quote_after.get(quote_char, n + 1):
            close = text.find(quote_char, k + 1)
            if close < 0:
                no_quote_after[quote_char] = k + 1
            else:
                end = close + 1
        if end < 0:
            blank = _BLANK.search(text, k)
            end = blank.start() if blank else n
        out.append(text[pos:k])
        out.append(MASK)
        pos = search = end
    if not out:
        return text
    out.append(text[pos:])
    return "".join(out)
