"""What a web page in the operator's browser cannot make the server do, the keys the server takes, and starting from
a tasks folder: the real server on a thread, spoken to over HTTP as a browser or a page would speak to it."""

import json
import shutil
from urllib.parse import urlparse

import pytest
from click.testing import CliRunner

from ptune.cli import main
from ptune.errors import PtuneError
from serve_helpers import make_checkpoint

httpx = pytest.importorskip("httpx")
uvicorn = pytest.importorskip("uvicorn")

from ptune.serving.app import create_app  # noqa: E402
from ptune.serving.thread import ServerThread  # noqa: E402

KEY = "guard-key-0123"
TEMPLATE = "[P*3] Tweet text : {text} Label : [TARGET]"
VERBALIZER = {"complaint": "complaint", "no complaint": "no complaint"}
CLASSIFY = ("/v1/classify", {"task": "complaints", "rows": [{"text": "my parcel is late"}]})
BODIES = [CLASSIFY, ("/v1/completions", {"model": "complaints", "prompt": "hi"}),
          ("/v1/chat/completions", {"model": "complaints", "messages": [{"role": "user", "content": "hi"}]}),
          ("/v1/tasks", {"name": "added", "path": "complaints"})]
# what a page of another site may send without asking the server first (no CORS preflight)
SIMPLE_TYPES = ["text/plain", "text/plain;charset=UTF-8", "application/x-www-form-urlencoded",
                "multipart/form-data; boundary=x", None]


@pytest.fixture(scope="module")
def tasks_dir(tiny_causal_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("guard")
    make_checkpoint(tiny_causal_dir, root / "complaints", TEMPLATE, verbalizer=VERBALIZER)
    return root


@pytest.fixture(scope="module")
def open_server(tasks_dir):
    """No keys, on loopback, tasks may be added."""
    with ServerThread(create_app({"complaints": tasks_dir / "complaints"}, tasks_dir=tasks_dir)) as url:
        yield url


@pytest.fixture(scope="module")
def keyed_server(tasks_dir):
    with ServerThread(create_app({"complaints": tasks_dir / "complaints"}, api_keys=[KEY])) as url:
        yield url


def error_text(response) -> str:
    error = response.json()["error"]
    return error["message"] if isinstance(error, dict) else error


def requests_seen(url: str) -> int:
    return httpx.get(f"{url}/health", timeout=30).json()["stats"]["requests"]


@pytest.mark.parametrize("path, body", BODIES)
def test_a_body_not_sent_as_json_is_refused_and_nothing_runs(open_server, path, body):
    before = requests_seen(open_server)
    for content_type in SIMPLE_TYPES:
        headers = {"Content-Type": content_type} if content_type else {}
        r = httpx.post(open_server + path, content=json.dumps(body), headers=headers, timeout=60)
        assert r.status_code == 415, (content_type, r.text)
        assert "application/json" in error_text(r)
        # the route's own error shape: OpenAI's on the OpenAI routes, {"error": "..."} on the native ones
        assert isinstance(r.json()["error"], dict) == (path in ("/v1/completions", "/v1/chat/completions"))
    assert requests_seen(open_server) == before
    names = [t["name"] for t in httpx.get(f"{open_server}/v1/tasks", timeout=30).json()["tasks"]]
    assert names == ["complaints"]


def test_json_with_a_charset_is_taken(open_server):
    path, body = CLASSIFY
    r = httpx.post(open_server + path, content=json.dumps(body),
                   headers={"Content-Type": "application/json; charset=utf-8"}, timeout=60)
    assert r.status_code == 200, r.text


def test_the_document_declares_415_in_each_routes_error_shape(open_server):
    doc = httpx.get(f"{open_server}/openapi.json", timeout=30).json()
    for path, _ in BODIES:
        responses = doc["paths"][path]["post"]["responses"]
        assert responses["415"]["content"] == responses["400"]["content"], path


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1.evil.example:{port}",
                                  "localhost.evil.example", "192.168.1.5:{port}", "[::1", "a:b:c"])
def test_a_foreign_host_is_refused_without_keys(open_server, host):
    """What a DNS-rebinding page's requests carry: its own site's name."""
    headers = {"Host": host.format(port=urlparse(open_server).port)}
    r = httpx.get(f"{open_server}/v1/tasks", headers=headers, timeout=30)
    assert r.status_code == 421 and "complaints" not in r.text
    assert "--allowed-host" in error_text(r) and "DNS rebinding" in error_text(r)
    r = httpx.get(f"{open_server}/v1/models", headers=headers, timeout=30)
    assert r.status_code == 421 and r.json()["error"]["code"] == "host_not_allowed"
    r = httpx.delete(f"{open_server}/v1/tasks/complaints", headers=headers, timeout=30)
    assert r.status_code == 421
    assert [t["name"] for t in httpx.get(f"{open_server}/v1/tasks", timeout=30).json()["tasks"]] == ["complaints"]


@pytest.mark.parametrize("host", ["localhost", "LocalHost:{port}", "127.0.0.1:{port}", "127.8.9.10", "[::1]:{port}"])
def test_loopback_hosts_are_served(open_server, host):
    r = httpx.get(f"{open_server}/v1/tasks", headers={"Host": host.format(port=urlparse(open_server).port)},
                  timeout=30)
    assert r.status_code == 200 and r.json()["tasks"][0]["name"] == "complaints"


def test_a_page_of_another_origin_is_refused_and_the_servers_own_is_served(open_server):
    port = urlparse(open_server).port
    path, body = CLASSIFY
    for origin in ("http://evil.example", "null", f"http://localhost:{port}", f"http://127.0.0.1:{port + 1}",
                   f"https://127.0.0.1:{port}"):
        r = httpx.post(open_server + path, json=body, headers={"Origin": origin}, timeout=60)
        assert r.status_code == 403 and "--api-key-file" in r.json()["error"], (origin, r.text)
    r = httpx.post(f"{open_server}/v1/completions", json={"model": "complaints", "prompt": "hi"},
                   headers={"Origin": "http://evil.example"}, timeout=60)
    assert r.status_code == 403 and r.json()["error"]["code"] == "origin_not_allowed"
    r = httpx.post(open_server + path, json=body, headers={"Origin": f"http://127.0.0.1:{port}"}, timeout=60)
    assert r.status_code == 200, r.text


def test_with_keys_any_host_and_origin_is_served_with_the_key(keyed_server):
    headers = {"Host": "ptune.example.org", "Origin": "https://app.example.org", "Authorization": f"Bearer {KEY}"}
    path, body = CLASSIFY
    assert httpx.post(keyed_server + path, json=body, headers=headers, timeout=60).status_code == 200
    r = httpx.post(keyed_server + path, content=json.dumps(body), headers={**headers, "Content-Type": "text/plain"},
                   timeout=60)
    assert r.status_code == 415  # whatever the key, a body is JSON


def test_health_shows_its_counters_only_to_a_key(keyed_server, open_server):
    assert httpx.get(f"{keyed_server}/health", timeout=30).json() == {"status": "ok"}
    wrong = httpx.get(f"{keyed_server}/health", headers={"Authorization": "Bearer not-the-key"}, timeout=30)
    assert wrong.json() == {"status": "ok"}
    full = httpx.get(f"{keyed_server}/health", headers={"Authorization": f"Bearer {KEY}"}, timeout=30).json()
    assert full["status"] == "ok" and "requests" in full["stats"] and full["tasks"] == 1
    assert "stats" in httpx.get(f"{open_server}/health", timeout=30).json()  # no keys, loopback: all of it


def test_allowed_hosts(tasks_dir):
    from ptune.serving.guard import BrowserGuard

    guard = BrowserGuard(None, ["ptune.internal", "10.0.0.7"])
    assert guard.host_allowed("ptune.internal") and guard.host_allowed("10.0.0.7")
    assert not guard.host_allowed("10.0.0.8") and not guard.host_allowed("evil.example")
    anywhere = BrowserGuard(None, ["0.0.0.0"])  # bound to every address: reached by any address, never by a name
    assert anywhere.host_allowed("192.168.1.5") and anywhere.host_allowed("fe80::1")
    assert not anywhere.host_allowed("evil.example")
    assert BrowserGuard(None, ["*"]).host_allowed("evil.example")
    for bad in ("http://ptune.internal", "ptune.internal:8000", "a/b", ""):
        with pytest.raises(PtuneError, match="--allowed-host"):
            create_app({"complaints": tasks_dir / "missing"}, allowed_hosts=[bad])  # before any model loads
    app = create_app({"complaints": tasks_dir / "complaints"}, allowed_hosts=["ptune.internal"])
    with ServerThread(app) as url:
        port = urlparse(url).port
        assert httpx.get(f"{url}/v1/tasks", headers={"Host": f"ptune.internal:{port}"}, timeout=30).status_code == 200
        assert httpx.get(f"{url}/v1/tasks", headers={"Host": "other.internal"}, timeout=30).status_code == 421


# ---------------------------------------------------------------------------------------------------------------
# keys


def serve(args, env=None):
    return CliRunner(env=env).invoke(main, ["serve", *args])


def test_keys_are_read_from_a_file(tmp_path):
    keys = tmp_path / "keys.txt"
    keys.write_text("# rotated 2026-12-01\n\n  first-key-0001  \n#second-key-0002\nthird-key-0003\n")
    missing = str(tmp_path / "no-checkpoint")
    res = serve([missing, "--host", "0.0.0.0", "--api-key-file", str(keys)])
    # the keys are taken (no refusal to listen), and nothing is said about keys in ps: it fails at the checkpoint
    assert res.exit_code == 2 and "refusing" not in res.output and "no-checkpoint" in res.output, res.output
    assert "warning" not in res.output
    from ptune.serving.auth import api_keys_from

    assert api_keys_from(["cli-key-0000"], "env-key-0004", keys) == ["cli-key-0000", "first-key-0001",
                                                                    "third-key-0003", "env-key-0004"]


@pytest.mark.parametrize("text, message", [(None, "cannot read"), ("# none\n\n", "holds no key"),
                                           (b"\xff\xfe", "not UTF-8")])
def test_a_key_file_that_gives_no_key_is_refused(tmp_path, text, message):
    keys = tmp_path / "keys.txt"
    if isinstance(text, bytes):
        keys.write_bytes(text)
    elif text is not None:
        keys.write_text(text)
    res = serve([str(tmp_path), "--api-key-file", str(keys)])
    assert res.exit_code == 2 and message in res.output and "keys.txt" in res.output, res.output


@pytest.mark.parametrize("key, why", [("clé-secrète-1", "non-ASCII"), ("two words here", "whitespace"),
                                      ("tab\tinside-key", "whitespace"), ("bell\x07-inside", "control"),
                                      ("shrt", "shorter than 8")])
def test_keys_no_request_could_carry_are_refused_at_start(tmp_path, key, why):
    keys = tmp_path / "keys.txt"
    keys.write_text(f"good-key-0000\n{key}\n")
    res = serve([str(tmp_path / "no-checkpoint"), "--api-key-file", str(keys)])
    assert res.exit_code == 2 and why in res.output and "line 2 of" in res.output, res.output
    assert key not in res.output  # a key is never printed
    res = serve([str(tmp_path / "no-checkpoint")], env={"PTUNE_API_KEY": key})
    assert res.exit_code == 2 and why in res.output and "PTUNE_API_KEY" in res.output, res.output
    with pytest.raises(PtuneError, match=why):
        create_app({"c": tmp_path / "no-checkpoint"}, api_keys=[key])  # before any model loads


def test_a_key_on_the_command_line_is_warned_about(tmp_path):
    res = serve([str(tmp_path / "no-checkpoint"), "--api-key", "command-line-key"])
    assert res.exit_code == 2 and "warning" in res.output and "(ps)" in res.output
    assert "--api-key-file" in res.output


def test_allowed_hosts_with_keys_are_warned_about(tmp_path):
    env = {"PTUNE_API_KEY": "env-key-0004"}
    res = serve([str(tmp_path / "no-checkpoint"), "--allowed-host", "ptune.internal"], env=env)
    assert res.exit_code == 2 and "--allowed-host has no effect with API keys" in res.output, res.output
    res = serve([str(tmp_path / "no-checkpoint"), "--allowed-host", "ptune.internal"])
    assert res.exit_code == 2 and "warning" not in res.output, res.output


# ---------------------------------------------------------------------------------------------------------------
# starting from a tasks folder


@pytest.fixture
def captured(monkeypatch):
    """``ptune serve`` builds its app and returns at once: the app is kept instead of served."""
    apps = []

    def run(self, *args, **kwargs):
        apps.append(self.config.app)
        self.started = True

    monkeypatch.setattr(uvicorn.Server, "run", run)
    return apps


def test_serve_tasks_dir_alone_serves_its_checkpoints_by_folder_name(tasks_dir, tmp_path, captured):
    root = tmp_path / "tasks"
    root.mkdir()
    for name in ("beta", "alpha", "bad name"):
        shutil.copytree(tasks_dir / "complaints", root / name)
    (root / "notes").mkdir()  # no ptune.json: not a checkpoint
    res = serve(["--tasks-dir", str(root)])
    assert res.exit_code == 0, res.output
    assert list(captured[0].state.tasks) == ["alpha", "beta"]
    assert "not served" in res.output and "bad name" in res.output and "serving alpha, beta" in res.output


def test_serve_tasks_dir_alone_starts_empty_and_takes_tasks_live(tasks_dir, tmp_path, captured, monkeypatch):
    root = tmp_path / "empty"
    root.mkdir()
    res = serve(["--tasks-dir", str(root)])
    assert res.exit_code == 0 and "no task yet" in res.output, res.output
    app = captured[0]
    monkeypatch.undo()  # the server runs for real from here
    with ServerThread(app) as url:
        assert httpx.get(f"{url}/v1/tasks", timeout=30).json() == {"tasks": []}
        assert httpx.get(f"{url}/health", timeout=30).json()["tasks"] == 0
        shutil.copytree(tasks_dir / "complaints", root / "late")
        r = httpx.post(f"{url}/v1/tasks", json={"name": "complaints", "path": "late"}, timeout=120)
        assert r.status_code == 201, r.text
        path, body = CLASSIFY
        r = httpx.post(url + path, json=body, timeout=60)
        assert r.status_code == 200 and r.json()["predictions"][0]["label"] in VERBALIZER


def test_serve_without_checkpoints_or_tasks_dir_says_what_to_give():
    res = serve([])
    assert res.exit_code == 2 and "--tasks-dir DIR" in res.output and "NAME=DIR" in res.output
