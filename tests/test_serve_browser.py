"""The playground and /docs in a real headless browser (Debian's chromium, driven by Playwright): the page a person
opens shows the label and scores ``Predictor.predict_rows`` gives, and the text a generation task generates, with
and without API keys, loading nothing from anywhere but the server."""

import math
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

from serve_helpers import standard_checkpoints

CHROMIUM = os.environ.get("PTUNE_CHROMIUM", "/usr/bin/chromium")
# no network beyond the server under test: no sign-in, updates, field trials or QUIC probes
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
KEY = "browser-key"
ROW = "my order arrived late and the box was broken"



def unavailable(reason: str) -> None:
    """Skip this module, or fail it where the browser is required (CI sets PTUNE_REQUIRE_BROWSER=1)."""
    if os.environ.get("PTUNE_REQUIRE_BROWSER") == "1":
        pytest.fail(f"{reason}, and PTUNE_REQUIRE_BROWSER=1", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


try:
    from playwright import sync_api
except ImportError:
    unavailable("playwright is not installed (pip install -e '.[test]')")
if not Path(CHROMIUM).exists():
    unavailable(f"no chromium at {CHROMIUM} (Debian: apt-get install chromium; `make test` installs it)")

from ptune.inference import Predictor  # noqa: E402
from ptune.serving.app import create_app  # noqa: E402
from ptune.serving.thread import ServerThread  # noqa: E402


@pytest.fixture(scope="module")
def checkpoints(tiny_causal_dir, tmp_path_factory):
    return standard_checkpoints(tiny_causal_dir, tmp_path_factory.mktemp("browser"))


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        chromium = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture(scope="module")
def open_server(checkpoints):
    with ServerThread(create_app(checkpoints)) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server(checkpoints):
    with ServerThread(create_app(checkpoints, api_keys=[KEY])) as url:
        yield url


class Tab:
    """A fresh page that records every request it makes and every script error."""

    def __init__(self, browser, server: str):
        self.page = browser.new_page(viewport={"width": 1000, "height": 800})
        self.server = server
        self.requests: list[str] = []
        self.errors: list[str] = []
        self.page.on("request", lambda request: self.requests.append(request.url))
        self.page.on("pageerror", lambda error: self.errors.append(str(error)))

    def __enter__(self):
        return self.page

    def __exit__(self, *exc):
        self.page.close()
        assert not self.errors, self.errors
        here = urlparse(self.server).netloc
        assert all(urlparse(url).netloc == here for url in self.requests if not url.startswith("data:")), \
            self.requests


def classify_in_page(page, task: str, text: str) -> tuple[str, dict[str, float], list[float]]:
    """Pick ``task``, type ``text``, run; the label shown, the scores shown and the bars' widths in pixels."""
    page.select_option("#task", task)
    page.fill("#fields textarea[name=text]", text)
    page.click("#form button[type=submit]")
    page.wait_for_selector("#out h2")
    label = page.inner_text("#out h2")
    names = page.locator("#out .scores .name").all_inner_texts()
    shown = page.locator("#out .scores .score").all_inner_texts()  # "-5.890  (99.5%)"
    widths = page.locator("#out .bar").evaluate_all("bars => bars.map(b => b.getBoundingClientRect().width)")
    return label, {n: float(s.split()[0]) for n, s in zip(names, shown)}, widths


def expected(checkpoint, text: str) -> dict:
    return Predictor.load(checkpoint).predict_rows([{"text": text}])[0]


@pytest.mark.parametrize("task", ["complaints", "sentiment"])
def test_the_label_shown_is_the_one_predict_gives(browser, open_server, checkpoints, task, tmp_path):
    want = expected(checkpoints[task], ROW)
    with Tab(browser, open_server) as page:
        page.goto(open_server + "/")
        page.wait_for_selector(f"#task option[value={task}]", state="attached")
        label, scores, widths = classify_in_page(page, task, ROW)
        if task == "complaints":
            page.screenshot(path=str(tmp_path / "playground.png"), full_page=True)
    assert label == want["prediction"]
    assert set(scores) == set(want["scores"])
    assert all(abs(scores[k] - want["scores"][k]) < 1e-3 for k in scores)
    # one bar per label, best first, as long as its share of the labels' probability
    assert len(widths) == len(scores) and all(w > 0 for w in widths)
    assert widths == sorted(widths, reverse=True) and list(scores)[0] == label
    top = max(want["scores"].values())
    shares = [math.exp(want["scores"][k] - top) for k in scores]
    assert [w / sum(widths) for w in widths] == pytest.approx([x / sum(shares) for x in shares], abs=0.02)


def test_a_generation_task_shows_its_text(browser, open_server, checkpoints):
    want = expected(checkpoints["reply"], ROW)["prediction"]
    with Tab(browser, open_server) as page:
        page.goto(open_server + "/playground")
        page.wait_for_selector("#task option[value=reply]", state="attached")
        page.select_option("#task", "reply")
        assert page.is_visible("#budget")
        page.fill("#fields textarea[name=text]", ROW)
        page.click("#form button[type=submit]")
        page.wait_for_selector("#out .status")
        shown = page.inner_text("#out pre")
        status = page.inner_text("#out .status")
    assert shown == want
    assert status.startswith("Finished:")


def test_with_keys_the_page_loads_and_asks_for_the_key(browser, keyed_server, checkpoints):
    want = expected(checkpoints["complaints"], ROW)
    with Tab(browser, keyed_server) as page:
        response = page.goto(keyed_server + "/")
        assert response.status == 200
        page.wait_for_selector("#out .error")
        assert "needs an API key" in page.inner_text("#out")
        assert page.locator("#task option").count() == 0  # nothing about the tasks without the key
        assert not page.is_visible("#form")
        for key, status in (("wrong-key", 401), (KEY, 200)):
            page.fill("#key", key)
            with page.expect_response(lambda r: r.url.endswith("/v1/tasks")) as answer:
                page.dispatch_event("#key", "change")
            assert answer.value.status == status
        page.wait_for_selector("#task option[value=complaints]", state="attached")
        label, scores, _ = classify_in_page(page, "complaints", ROW)
    assert label == want["prediction"] and set(scores) == set(want["scores"])


def test_with_keys_docs_loads_and_reads_the_document_with_the_key(browser, keyed_server):
    with Tab(browser, keyed_server) as page:
        assert page.goto(keyed_server + "/docs").status == 200
        assert page.is_visible("#key-bar")
        page.wait_for_selector(".swagger-ui")
        assert page.locator(".opblock").count() == 0  # the document needs the key
        page.fill("#key", KEY)
        page.click("#key-bar button")
        page.wait_for_selector(".opblock-summary-path")
        paths = page.locator(".opblock-summary-path").all_inner_texts()
    assert "/v1/classify" in [p.strip() for p in paths]


def test_without_keys_docs_shows_no_key_field(browser, open_server):
    with Tab(browser, open_server) as page:
        page.goto(open_server + "/docs")
        page.wait_for_selector(".opblock-summary-path")
        assert not page.is_visible("#key-bar")
