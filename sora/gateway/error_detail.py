"""What a function URL caller sees of a failure (`server.errorDetail`), the policy alone.

A function URL is the part of a host that anyone may reach, so by default (`message`) a
failure tells its caller the error's type and message and nothing about the host: the paths of
the function's folder, of Sora's install, of its Python, of the state dir and of the config are
replaced by short names, and why a function cannot start (a config error naming a file, a
setup failure naming its log) is left out: the operator reads it in `/healthz` and the host's
log. `none` answers as Lambda's function URLs do, a plain `Internal Server Error`; `full`
passes the error through as the function and the host wrote it, trace included (development).

The Invoke API keeps Lambda's error payload (its callers hold an invoke key on a keyed host);
only the reasons of a function that cannot start are shortened there too.

Only failures pass through here: a successful call never pays for any of it.
"""
from __future__ import annotations

import os
import re
import sys

from .. import protocol as p
from ..config import HostConfig
from .reason_phrases import phrase

FULL, MESSAGE, NONE = "full", "message", "none"
# Sora's own errors whose message is a start-up reason: config errors (file, field), setup
# failures (the setup log's path), boot errors (the module's load error), and a container the
# engine could not make or start (its words name the host's folders, the engine's socket,
# its storage: the operator reads them in /healthz and the log).
START_REASONS = frozenset({"Sora.FunctionUnavailable", "Sora.ConfigError",
                           "Sora.ContainerError"})
# Lambda's function URLs answer an unhandled error with this text and 502.
LAMBDA_URL_ERROR = b"Internal Server Error"


def unavailable_message(name: str) -> str:
    return (f"Function {name} cannot serve: it failed to start (the host's operator can see "
            "why in /healthz and the host's log)")


class ErrorDetail:
    def __init__(self, level: str, roots: list[tuple[str, str]], functions=None):
        """`roots`: (path, name shown instead), any order. `functions`: the FunctionTable
        whose remote functions' folders (on their hosts) are hidden too, as they come."""
        self.level = level
        self.functions = functions
        self._base = list(roots)
        self._version = functions.version if functions is not None else 0
        self._set_roots(roots)

    def _set_roots(self, roots: list[tuple[str, str]]) -> None:
        # Longest first, so a function folder inside the config's folder gets its own name;
        # a path counts only as a whole (`/srv/fns/echo` is not in `/srv/fns/echo-data`).
        self.roots = sorted({(path.rstrip(os.sep), shown) for path, shown in roots
                             if len(path.rstrip(os.sep)) > 1},
                            key=lambda root: len(root[0]), reverse=True)
        self.shown = dict(self.roots)
        self.pattern = re.compile(
            "(?:" + "|".join(re.escape(path) for path, _ in self.roots) + r")(?![\w@+-]|\.\w)"
        ) if self.roots else None

    def _follow_functions(self) -> None:
        """Add the folders of functions joined hosts serve, when the table learnt new ones
        (only failures pay for this look)."""
        table = self.functions
        if table is None or table.version == self._version:
            return
        self._version = table.version
        remote = [(fn.directory, ".") for fn in table.remote.values()]
        self._set_roots(self._base + remote)

    @classmethod
    def of(cls, config: HostConfig, functions=None) -> "ErrorDetail":
        sora_dir = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        roots = [(sora_dir, "<sora>"), (config.stateDir, "<stateDir>"),
                 (os.path.dirname(os.path.abspath(config.path)), "<config>")]
        if sys.prefix not in ("/usr", "/usr/local", "/"):   # a virtualenv, not the system
            roots.append((sys.prefix, "<python>"))
        roots += [(fn.directory, ".") for fn in config.functions]
        roots += [(broken.directory, ".") for broken in config.broken]
        # A link in a path (a temp dir under /tmp -> /private/tmp, a symlinked checkout) is
        # written either way by the runtimes and by Python.
        roots += [(os.path.realpath(path), shown) for path, shown in roots]
        return cls(config.server.errorDetail, roots, functions)

    def redact(self, text: str) -> str:
        """`text` with every known host path replaced by its short name."""
        self._follow_functions()
        if self.pattern is None:
            return text
        return self.pattern.sub(lambda match: self.shown[match.group(0)], text)

    def message(self, function: str, error_type: str, message: str) -> str:
        """The errorMessage a caller gets under `message` (and the Invoke API, for Sora's
        start-up reasons)."""
        if error_type in START_REASONS:
            return unavailable_message(function)
        return self.redact(message)

    def for_caller(self, function: str, error_type: str, message: str) -> str:
        """An error Sora made (not the function), as this host's level shows it: whole under
        `full`, else as `message` gives it."""
        return message if self.level == FULL else self.message(function, error_type, message)

    def function_url_error(self, function: str, status: int,
                           body: bytes) -> tuple[bytes, str]:
        """(body, content type) for a failed function URL call answered `status`, from the
        error JSON the worker, the client or the gateway made."""
        if self.level == FULL:
            return body, "application/json"
        if self.level == NONE:
            return plain_text(status), "text/plain"
        error_type, message = p.parse_error(body)
        return p.error_body(error_type, self.message(function, error_type, message)), \
            "application/json"


def plain_text(status: int) -> bytes:
    """`none`'s body: Lambda's text for a 502, else the status's reason phrase."""
    return LAMBDA_URL_ERROR if status == 502 else phrase(status).encode()
