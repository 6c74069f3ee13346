"""URL helpers: parse once, render with the password hidden everywhere a person can see it."""
from __future__ import annotations

import re

from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError

MASK = "***"

# scheme://user:password@host  -- also catches URLs embedded in driver error text.
_URL_PASSWORD = re.compile(r"(?P<head>[A-Za-z][A-Za-z0-9+.\-]*://[^:/@\s]*:)(?P<pw>[^@\s]*)(?P<at>@)")
# libpq-style "password=secret" fragments that drivers may echo back.
_KV_PASSWORD = re.compile(r"(?P<head>\bpassword\s*=\s*)(?P<pw>'[^']*'|\"[^\"]*\"|\S+)", re.IGNORECASE)


def parse_url(url: str) -> URL:
    """Parse a SQLAlchemy URL; a ValueError never shows the password."""
    try:
        return make_url(url)
    except (ArgumentError, ValueError) as exc:
        raise ValueError(f"not a valid database URL: {mask_text(url)!r}") from exc


def mask_url(url: str | URL) -> str:
    """Render a URL with its password replaced by ***."""
    if isinstance(url, URL):
        return url.render_as_string(hide_password=True)
    try:
        return make_url(url).render_as_string(hide_password=True)
    except (ArgumentError, ValueError):
        return mask_text(url)


# Passwords of every URL the loaded configuration holds; mask_text hides them wherever
# they appear, even in text that does not look like a URL (a driver echoing its DSN).
_known_secrets: set[str] = set()


def register_secret(url: str | URL) -> None:
    """Remember the password of ``url`` so that mask_text hides it from any text."""
    try:
        password = (url if isinstance(url, URL) else make_url(url)).password
    except (ArgumentError, ValueError):
        return
    if password:
        _known_secrets.add(str(password))


def mask_text(text: str) -> str:
    """Hide passwords in free text (exception messages, driver errors, logs).

    Hides anything shaped like ``scheme://user:pw@`` or ``password=pw``, and every password
    registered with :func:`register_secret`, wherever it appears.
    """
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["at"], text)
    text = _KV_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    for secret in sorted(_known_secrets, key=len, reverse=True):
        if len(secret) >= 3:
            text = text.replace(secret, MASK)
    return text
