"""`GET /ui/static/{file}`: the dashboard's CSS and scripts, vendored in the package and read
once; only the files that are there, by exact name (no path is ever built from the URL)."""
from __future__ import annotations

import importlib.resources

import falcon

from .session import redirect, secure

CONTENT_TYPES = {".css": "text/css; charset=utf-8",
                 ".js": "text/javascript; charset=utf-8",
                 ".svg": "image/svg+xml", ".png": "image/png"}


def _load() -> dict[str, tuple[bytes, str]]:
    files = {}
    for entry in importlib.resources.files(__package__).joinpath("static").iterdir():
        suffix = "." + entry.name.rpartition(".")[2]
        if entry.is_file() and suffix in CONTENT_TYPES:
            files[entry.name] = (entry.read_bytes(), CONTENT_TYPES[suffix])
    return files


class StaticResource:
    auth_scope = "public"   # the login page's CSS comes before any login

    def __init__(self):
        self.files = _load()

    async def on_get(self, req, resp, file: str) -> None:
        found = self.files.get(file)
        if found is None:
            raise falcon.HTTPNotFound(description=f"No static file {file[:100]!r}")
        secure(resp)
        # Not secret, and the same for everyone until the next install: cached briefly.
        resp.set_header("Cache-Control", "max-age=300")
        resp.data, resp.content_type = found


class UiRootRedirect:
    """`/ui` without its slash: the cookie's path is /ui/, so the pages live below it."""
    auth_scope = "public"

    async def on_get(self, req, resp) -> None:
        redirect(resp, "/ui/")
