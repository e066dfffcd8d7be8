"""Versions and aliases an older Sora kept in files, imported into the store once.

Before issue 21 a version's record was `<stateDir>/versions/<NAME>/<N>/version.json` beside
its `code/`, and a function's aliases `<stateDir>/versions/<NAME>/aliases.json`. At the
supervisor's first start with the store (`import_files`, before anything reads versions),
each becomes a row (`INSERT ... ON CONFLICT DO NOTHING`: a number another host's import or
publish already holds keeps that host's version, and this host's copy is replaced by the
row's on first use); on PostgreSQL the row carries the code as a tar of the existing copy.
Then a marker file says it is done for that store (`<stateDir>/versions/.imported-<id>`, the
id a hash of `sqlite` or of the PostgreSQL URL without its password): the files stay where
they are (a version's folder remains its local copy; aliases.json is no longer read), and a
version pruned later is never imported again. A host switched to another store imports its
copies into that one at its first start there (each copy's version.json is the same record),
rather than losing them as copies with no row; an alias of aliases.json naming a version the
store does not have is left out.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import random

from ..config import FUNCTION_NAME_RE
from . import code_tar
from .qualifier import LATEST, is_version
from .store import (CODE_DIR, VERSION_FILE, VersionStore, _created, _tree_size,
                    lock_function)

log = logging.getLogger("sora.versions")

MARKER_PREFIX = ".imported-"
ALIASES_FILE = "aliases.json"


def marker_path(store: VersionStore) -> str:
    where = store.store.display_url if store.store.kind != "sqlite" else "sqlite"
    return os.path.join(store.root, MARKER_PREFIX + hashlib.sha256(
        where.encode()).hexdigest()[:16])


def import_files(store: VersionStore) -> int:
    """Import the files once; returns how many versions and aliases became rows."""
    marker = marker_path(store)
    if os.path.exists(marker) or not os.path.isdir(store.root):
        _mark(marker)
        return 0
    count = 0
    for name in sorted(os.listdir(store.root)):
        folder = os.path.join(store.root, name)
        if not FUNCTION_NAME_RE.match(name) or not os.path.isdir(folder):
            continue
        count += _import_function(store, name, folder)
    _mark(marker)
    if count:
        log.info("versions: imported %d version(s) and alias(es) from files into the store "
                 "%s", count, store.store.display_url)
    return count


def _import_function(store: VersionStore, name: str, folder: str) -> int:
    rows = []
    for entry in sorted(os.listdir(folder)):
        record = _read_json(os.path.join(folder, entry, VERSION_FILE)) \
            if is_version(entry) else None
        if not record or str(record.get("Version")) != entry or "config" not in record:
            continue
        code = os.path.join(folder, entry, CODE_DIR)
        if not os.path.isdir(code):
            continue
        rows.append((name, int(entry), json.dumps(record["config"]), record.get("CodeSha256"),
                     record.get("ConfigSha256"), record.get("Description") or "",
                     _created(record.get("LastModified")),
                     code_tar.pack(code) if store.carries_code else None,
                     record.get("CodeSize") or _tree_size(code)))
    aliases = (_read_json(os.path.join(folder, ALIASES_FILE)) or {}).get("aliases") or {}
    if not rows and not aliases:
        return 0
    conn = store.conn
    count = 0
    with conn.transaction():
        lock_function(conn, name)
        for row in rows:
            count += conn.execute(
                "INSERT INTO function_versions (function, version, config, code_sha256, "
                "settings_sha256, description, created, code, code_size) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (function, version) DO NOTHING",
                row).rowcount
        present = {LATEST} | {str(r[0]) for r in conn.execute(
            "SELECT version FROM function_versions WHERE function = ?", (name,))}
        for alias, doc in sorted(aliases.items()):
            if not isinstance(doc, dict) or not {doc.get("FunctionVersion"), *(doc.get(
                    "RoutingConfig") or {}).get("AdditionalVersionWeights", {})} <= present:
                continue   # names a version the store does not have
            count += conn.execute(
                "INSERT INTO function_aliases (function, name, document, revision) "
                "VALUES (?, ?, ?, ?) ON CONFLICT (function, name) DO NOTHING",
                (name, alias, json.dumps(doc), random.randint(1, 2**31 - 1))).rowcount
    return count


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _mark(marker: str) -> None:
    os.makedirs(os.path.dirname(marker), mode=0o700, exist_ok=True)
    with open(marker, "w", encoding="utf-8") as fh:
        fh.write("versions and aliases.json imported into the store\n")
