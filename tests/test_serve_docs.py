"""/docs works offline: the page and everything it loads come from the server itself."""

import re
from urllib.parse import urljoin, urlparse

import pytest

from serve_helpers import make_checkpoint

httpx = pytest.importorskip("httpx")

from ptune.serving.app import create_app  # noqa: E402
from ptune.serving.thread import ServerThread  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_causal_dir, tmp_path_factory):
    checkpoint = make_checkpoint(tiny_causal_dir, tmp_path_factory.mktemp("docs") / "reply",
                                 "[P*2] {text} Label : [TARGET]", task_type="generation")
    with ServerThread(create_app({"reply": checkpoint})) as url:
        yield url


def referenced(html: str) -> list[str]:
    """Every URL the page loads: scripts, stylesheets, icons, and the schema the script fetches."""
    urls = re.findall(r'(?:src|href)\s*=\s*"([^"]+)"', html)
    urls += re.findall(r"url:\s*'([^']+)'", html)
    return urls


def test_docs_and_every_asset_come_from_this_server(server):
    page = httpx.get(server + "/docs", timeout=30)
    assert page.status_code == 200 and "SwaggerUIBundle" in page.text
    urls = referenced(page.text)
    assert any(u.endswith(".js") for u in urls) and any(u.endswith(".css") for u in urls)
    assert "/openapi.json" in urls
    for url in urls:
        absolute = urljoin(server + "/docs", url)
        assert urlparse(absolute).netloc == urlparse(server).netloc, f"{url} is not served here"
        r = httpx.get(absolute, timeout=30)
        assert r.status_code == 200 and r.content, url
    script = httpx.get(urljoin(server, next(u for u in urls if u.endswith(".js"))), timeout=30).text
    assert "SwaggerUIBundle" in script and len(script) > 100_000  # the real bundle, not a stub


def test_playground_is_one_self_contained_page(server, tmp_path):
    import shutil
    import subprocess

    page = httpx.get(server + "/playground", timeout=30)
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assert not re.search(r"(?:src|href)\s*=", page.text)  # nothing loaded from anywhere
    assert "http://" not in page.text and "https://" not in page.text
    for endpoint in ("/v1/tasks", "/v1/classify", "/v1/chat/completions"):
        assert f'"{endpoint}"' in page.text
    script = re.search(r"<script>(.*)</script>", page.text, re.S).group(1)
    node = shutil.which("node")
    if node:  # the script at least parses
        (tmp_path / "page.js").write_text(script)
        check = subprocess.run([node, "--check", str(tmp_path / "page.js")], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
