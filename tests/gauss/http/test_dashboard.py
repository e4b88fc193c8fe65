"""The dashboard's files (SPEC section 8) as a running server serves them: headers, ETags, the vendored chart library."""

from __future__ import annotations

import hashlib
import json
import re
from html.parser import HTMLParser
from typing import Callable

import pytest
from support.http import Api

from gauss.http.dashboard import CONTENT_SECURITY_POLICY, STATIC_DIR, load_static

VENDOR = STATIC_DIR / "vendor"


class _PageParts(HTMLParser):
    """Every <script> and <link> of a page, inline script/style, and event-handler attributes."""

    def __init__(self) -> None:
        super().__init__()
        self.scripts: list[dict[str, str | None]] = []
        self.links: list[dict[str, str | None]] = []
        self.inline: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        for name in a:
            if name.startswith("on") or name == "style":
                self.inline.append(f"<{tag} {name}>")
        if tag == "script":
            self.scripts.append(a)
            self._in_script = "src" not in a
        elif tag == "style":
            self.inline.append("<style>")
        elif tag == "link":
            self.links.append(a)

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_script = False

    def handle_data(self, data: str) -> None:
        if self._in_script and data.strip():
            self.inline.append("inline <script>")


def _page_parts(html: str) -> _PageParts:
    parts = _PageParts()
    parts.feed(html)
    return parts


def test_page_is_served_at_root_with_csp_nosniff_and_etag(api: Api) -> None:
    response = api.get("/")
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "text/html; charset=utf-8"
    csp = response.headers["Content-Security-Policy"]
    assert csp == CONTENT_SECURITY_POLICY
    assert "default-src 'self'" in csp and "unsafe-inline" not in csp and "unsafe-eval" not in csp
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["Cache-Control"] == "no-cache"
    body = response.content
    assert response.headers["ETag"] == '"' + hashlib.sha256(body).hexdigest()[:32] + '"'
    assert body == (STATIC_DIR / "index.html").read_bytes()
    assert api.get("/index.html").content == body


def test_page_has_no_inline_script_or_style_and_only_same_origin_references(api: Api) -> None:
    parts = _page_parts(api.get("/").text)
    assert parts.inline == []
    sources = [s["src"] for s in parts.scripts] + [link["href"] for link in parts.links]
    assert sources and all(s and s.startswith("/static/") for s in sources), sources
    for source in sources:
        assert source is not None
        response = api.get(source)
        assert response.status_code == 200, source
        assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert {"type": "module", "src": "/static/js/app.js"} in parts.scripts


def test_modules_import_only_files_the_server_has(api: Api) -> None:
    files = load_static()
    for path, item in files.items():
        if not path.endswith(".js") or "/vendor/" in path:
            continue
        assert item.content_type == "text/javascript; charset=utf-8"
        for target in re.findall(r'^import .* from "(\./[^"]+)";$', item.body.decode(), re.M):
            resolved = path.rsplit("/", 1)[0] + "/" + target[2:]
            assert resolved in files, f"{path} imports {target}, which is not served"
            assert api.get(resolved).status_code == 200


def test_if_none_match_answers_304_without_a_body(api: Api) -> None:
    first = api.get("/static/js/app.js")
    etag = first.headers["ETag"]
    again = api.get("/static/js/app.js", headers={"If-None-Match": etag})
    assert again.status_code == 304
    assert again.content == b""
    assert again.headers["ETag"] == etag
    assert api.get("/static/js/app.js", headers={"If-None-Match": f'"other", W/{etag}'}).status_code == 304
    changed = api.get("/static/js/app.js", headers={"If-None-Match": '"stale"'})
    assert changed.status_code == 200 and changed.content == first.content


def test_head_answers_the_length_without_a_body(api: Api) -> None:
    response = api.request("HEAD", "/static/css/dashboard.css")
    assert response.status_code == 200
    assert int(response.headers["Content-Length"]) == len((STATIC_DIR / "css" / "dashboard.css").read_bytes())
    assert response.content == b""


@pytest.mark.parametrize(
    "path", ["/static/nothing.js", "/static/../app.py", "/static/%2e%2e/app.py", "/static/js/../../app.py", "/static/", "/static"]
)
def test_only_files_of_the_static_directory_are_served(api: Api, path: str) -> None:
    response = api.get(path)
    assert response.status_code == 404
    assert "error" in response.json()


def test_page_and_static_files_stay_open_with_a_token_but_data_does_not(make_api: Callable[..., Api]) -> None:
    locked = make_api(token="s3cret-token")
    assert locked.get("/").status_code == 200
    assert locked.get("/static/js/api.js").status_code == 200
    assert locked.get("/static/vendor/MANIFEST.json").status_code == 200
    assert locked.get("/api/topics").status_code == 401
    assert locked.get("/staticx").status_code == 401


def test_with_a_token_the_page_says_so_in_its_head_and_has_its_own_etag(api: Api, make_api: Callable[..., Api]) -> None:
    """So the page asks for the token before its first request, instead of learning it from a 401 (a console error)."""
    from gauss.http.dashboard import TOKEN_META

    open_page = api.get("/")
    locked_page = make_api(token="s3cret-token").get("/")
    assert TOKEN_META not in open_page.content
    assert locked_page.content.count(TOKEN_META) == 1
    assert locked_page.content.replace(TOKEN_META, b"").replace(b"\n  \n", b"\n") == open_page.content
    assert locked_page.headers["ETag"] != open_page.headers["ETag"]


def test_vendored_chart_library_matches_its_manifest() -> None:
    manifest = json.loads((VENDOR / "MANIFEST.json").read_text())["lightweight-charts"]
    assert manifest["license"] == "Apache-2.0"
    names = {p.name for p in VENDOR.iterdir()} - {"MANIFEST.json"}
    assert names == set(manifest["files"]), "every vendored file is in the manifest, and only those"
    for name, entry in manifest["files"].items():
        assert hashlib.sha256((VENDOR / name).read_bytes()).hexdigest() == entry["sha256"], name
    script = (VENDOR / "lightweight-charts.standalone.production.js").read_text()
    assert f"Lightweight Charts\u2122 v{manifest['version']}" in script[:300]
    assert "Apache License" in (VENDOR / "lightweight-charts.LICENSE").read_text()[:200]


def test_page_credits_tradingview_as_the_licence_asks(api: Api) -> None:
    html = api.get("/").text
    assert 'href="https://www.tradingview.com/"' in html
    assert "/static/vendor/lightweight-charts.LICENSE" in html
