"""API keys: every endpoint but /health needs the bearer key; no key, no listening beyond loopback."""

import pytest
from click.testing import CliRunner

from ptune.cli import main
from ptune.errors import PtuneError
from ptune.serving.auth import api_keys_from, check_bind, key_matches
from serve_helpers import make_checkpoint

httpx = pytest.importorskip("httpx")
openai = pytest.importorskip("openai")

from ptune.serving.app import create_app  # noqa: E402
from ptune.serving.thread import ServerThread  # noqa: E402


@pytest.fixture(scope="module")
def server(tiny_causal_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("auth")
    checkpoint = make_checkpoint(tiny_causal_dir, root / "complaints", "[P*3] Tweet text : {text} Label : [TARGET]",
                                 verbalizer={"complaint": "complaint", "no complaint": "no complaint"})
    app = create_app({"complaints": checkpoint}, api_keys=["first-key", "second-key"])
    with ServerThread(app) as url:
        yield url


GUARDED = [("GET", "/v1/tasks", None), ("GET", "/v1/models", None), ("GET", "/openapi.json", None),
           ("POST", "/v1/classify", {"task": "complaints", "rows": [{"text": "hi"}]}),
           ("POST", "/v1/completions", {"model": "complaints", "prompt": "hi"}),
           ("POST", "/v1/chat/completions", {"model": "complaints", "messages": [{"role": "user", "content": "hi"}]}),
           ("GET", "/no/such/path", None)]


@pytest.mark.parametrize("method, path, body", GUARDED)
def test_every_endpoint_but_health_needs_a_key(server, method, path, body):
    for headers in ({}, {"Authorization": "Bearer wrong-key"}, {"Authorization": "first-key"},
                    {"Authorization": "Basic first-key"}, {"Authorization": "Bearer first-key-and-more"}):
        r = httpx.request(method, server + path, json=body, headers=headers, timeout=60)
        assert r.status_code == 401, (headers, r.text)
        assert r.json()["error"]["code"] == "invalid_api_key" and r.headers["www-authenticate"] == "Bearer"
    for key in ("first-key", "second-key"):
        r = httpx.request(method, server + path, json=body, headers={"Authorization": f"Bearer {key}"}, timeout=60)
        assert r.status_code == (404 if path == "/no/such/path" else 200), r.text


def test_health_needs_no_key(server):
    assert httpx.get(server + "/health", timeout=60).json()["status"] == "ok"


@pytest.mark.parametrize("path", ["/", "/playground", "/docs", "/docs-assets/swagger-ui.css"])
def test_pages_load_without_a_key_and_hold_no_data(server, path):
    r = httpx.get(server + path, timeout=60)
    assert r.status_code == 200 and "complaints" not in r.text  # no task name: the data needs the key


def test_the_open_prefix_opens_only_static_files(server):
    import socket
    from urllib.parse import urlparse

    host, port = urlparse(server).hostname, urlparse(server).port
    for path in ("/docs-assets/../v1/tasks", "/docs-assets/%2e%2e/v1/tasks", "/docs-assets/../openapi.json"):
        with socket.create_connection((host, port), timeout=30) as sock:  # sent as is, not normalised by a client
            sock.sendall(f"GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n".encode())
            answer = b""
            while chunk := sock.recv(65536):
                answer += chunk
        assert not answer.startswith(b"HTTP/1.1 200") and b"complaints" not in answer, (path, answer[:200])


def test_openai_client_with_and_without_the_key(server):
    good = openai.OpenAI(base_url=f"{server}/v1", api_key="second-key", max_retries=0)
    assert [m.id for m in good.models.list()] == ["complaints"]
    assert good.completions.create(model="complaints", prompt="hi").choices[0].text in ("complaint", "no complaint")
    bad = openai.OpenAI(base_url=f"{server}/v1", api_key="nope", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        bad.models.list()


def test_key_matching():
    assert key_matches("Bearer k", ["k"]) and key_matches("bearer  k ", ["x", "k"])
    assert not key_matches("Bearer k2", ["k"]) and not key_matches(None, ["k"]) and not key_matches("k", ["k"])


def test_keys_from_options_and_environment():
    assert api_keys_from(("key-a-00",), "key-b-00, key-c-00,,key-a-00") == ["key-a-00", "key-b-00", "key-c-00"]
    assert api_keys_from((), None) == [] and api_keys_from((), " , ") == []


@pytest.mark.parametrize("host", ["127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"])
def test_loopback_needs_no_key(host):
    check_bind(host, [], False)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.org"])
def test_other_addresses_need_a_key_or_insecure(host):
    with pytest.raises(PtuneError, match="without an API key"):
        check_bind(host, [], False)
    check_bind(host, ["k"], False)
    check_bind(host, [], True)


def test_serve_command_refuses_before_loading_anything(tmp_path):
    missing = str(tmp_path / "no-checkpoint")
    res = CliRunner().invoke(main, ["serve", missing, "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "refusing to listen on 0.0.0.0 without an API key" in res.output
    # with a key (from the environment) it goes on, and fails only at the missing checkpoint
    res = CliRunner(env={"PTUNE_API_KEY": "key-one-1,key-two-2"}).invoke(main, ["serve", missing, "--host", "0.0.0.0"])
    assert res.exit_code == 2 and "refusing" not in res.output and "no-checkpoint" in res.output
    res = CliRunner().invoke(main, ["serve", missing, "--host", "0.0.0.0", "--insecure"])
    assert res.exit_code == 2 and "refusing" not in res.output
