"""What a qualifier is (`$LATEST`, a version number, an alias) and the data path's key for it.

A published version is addressed on the data path by the key `NAME:N` (its workers run with
`--name NAME:N`, their identities are `NAME:N/<pid>`, MEMBERS lists them under `NAME:N`);
`$LATEST` keeps the plain `NAME`. ":" is not allowed in a function name, so a key names one
thing. Qualifiers come from callers (the Invoke API's path and `Qualifier`, a function URL's
path), so each is checked here before it names a folder or a key: only digits (a version, at
most MAX_VERSION, Lambda's range), `$LATEST`, or Lambda's alias pattern. Anything else —
`../x`, `1/../../`, a number of 40 digits, non-ASCII letters — is refused with what was
expected, never looked up.
"""
from __future__ import annotations

import re

LATEST = "$LATEST"
# Lambda's versions are 1..2^32-1; a larger number is refused, not parsed as a huge int.
MAX_VERSION = (1 << 32) - 1
VERSION_RE = re.compile(r"^[1-9][0-9]{0,9}$")
# Lambda's alias pattern: letters, digits, '-' and '_', 1 to 128, not all digits (that would
# be a version).
ALIAS_RE = re.compile(r"^(?![0-9]+$)[A-Za-z0-9_-]{1,128}$")


class BadQualifier(ValueError):
    """A qualifier that is neither $LATEST, a version number, nor an alias name."""


def is_version(qualifier: str) -> bool:
    return bool(VERSION_RE.match(qualifier)) and int(qualifier) <= MAX_VERSION


def is_alias(qualifier: str) -> bool:
    return bool(ALIAS_RE.match(qualifier)) and qualifier != LATEST


def kind(qualifier: str) -> str:
    """"latest", "version" or "alias"; BadQualifier for anything else (the message says what
    was expected and shows the value escaped: it may hold anything a caller sent)."""
    if qualifier == LATEST:
        return "latest"
    if is_version(qualifier):
        return "version"
    if is_alias(qualifier):
        return "alias"
    raise BadQualifier(
        f"expected a qualifier $LATEST, a version number from 1 to {MAX_VERSION}, or an "
        f"alias name (letters, digits, '-' and '_', at most 128, not all digits), got "
        f"{ascii(qualifier[:80])}")


def check_alias_name(name: str) -> str:
    if not is_alias(name):
        raise BadQualifier(f"expected an alias name of letters, digits, '-' and '_' (1 to "
                           f"128, not all digits), got {ascii(name[:80])}")
    return name


def data_key(name: str, version: str = LATEST) -> str:
    """The data path's key of a function's version: `NAME` for $LATEST, else `NAME:N`."""
    return name if version == LATEST else f"{name}:{version}"


def split_key(key: str) -> tuple[str, str]:
    """(name, version) of a data path key (the inverse of data_key)."""
    name, sep, version = key.partition(":")
    return (name, version) if sep else (name, LATEST)
