"""The dashboard's Origin check as real browsers send it: under a no-referrer policy Chromium
posts a page's own forms with `Origin: null` and `Sec-Fetch-Site: same-origin` (tests/browser
found every login refused when the pages had that policy and this was not allowed)."""
from __future__ import annotations

from sora.gateway.dashboard.session import same_origin


class Request:
    def __init__(self, scheme: str = "http", **headers):
        self.scheme = scheme
        self.headers = {k.replace("_", "-").lower(): v for k, v in headers.items()}

    def get_header(self, name: str):
        return self.headers.get(name.lower())


def test_the_pages_own_post_with_a_null_origin_is_same_origin():
    assert same_origin(Request(Origin="null", Sec_Fetch_Site="same-origin",
                               Host="127.0.0.1:8080"))


def test_a_null_origin_from_anywhere_else_is_refused():
    for site in ("cross-site", "same-site", "none", None):
        headers = {"Origin": "null", "Host": "127.0.0.1:8080"}
        if site:
            headers["Sec_Fetch_Site"] = site
        assert not same_origin(Request(**headers)), site


def test_other_origins_are_compared_with_the_host():
    assert same_origin(Request(Origin="http://127.0.0.1:8080", Host="127.0.0.1:8080"))
    assert not same_origin(Request(Origin="http://127.0.0.1:9090", Host="127.0.0.1:8080"))
    assert not same_origin(Request(Origin="http://evil.example:8080", Host="127.0.0.1:8080",
                                   Sec_Fetch_Site="same-origin"))
    assert same_origin(Request(Host="127.0.0.1:8080")), "no Origin: not a browser's post"
