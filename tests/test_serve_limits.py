"""Connection limits against the real server in a thread (the uvicorn config ``ptune serve`` runs): a stalled
header or body gets 408 and is closed within its deadline, idle sockets beyond the concurrency limit cannot shut
``/health`` out for long, and a full queue answers 503 with Retry-After at once."""

import json
import select
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve_helpers import make_checkpoint

httpx = pytest.importorskip("httpx")
pytest.importorskip("uvicorn")

from ptune.serving.app import create_app  # noqa: E402
from ptune.serving.protocol import Limits  # noqa: E402
from ptune.serving.server import Connections  # noqa: E402
from ptune.serving.thread import ServerThread  # noqa: E402

DEADLINE = 0.5
"""The header and body deadlines in these tests, in seconds."""
SLACK = 3.0
"""How much later than its deadline a cut may come on a busy 2-core machine."""


@pytest.fixture(scope="module")
def checkpoint(tiny_causal_dir, tmp_path_factory):
    return make_checkpoint(tiny_causal_dir, tmp_path_factory.mktemp("limits") / "complaints",
                           "[P*3] Tweet text : {text} Label : [TARGET]",
                           verbalizer={"complaint": "complaint", "no complaint": "no complaint"})


def serve(checkpoint, limits=None, **connections):
    app = create_app({"complaints": checkpoint}, limits=limits or Limits(body_timeout=DEADLINE))
    options = {"header_timeout": DEADLINE, "keep_alive_timeout": 30.0, **connections}
    return app, ServerThread(app, connections=Connections(**options))


def connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def read_until_closed(sock: socket.socket, within: float) -> bytes:
    """Everything the server sends until it closes the connection; fails if it is still open after ``within`` s."""
    sock.settimeout(within)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except TimeoutError:
        pytest.fail(f"the connection is still open after {within} s; received {data[:200]!r}")
    except ConnectionResetError:
        pass
    return data


def split_answer(data: bytes) -> tuple[int, dict, bytes]:
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


def read_answer(sock: socket.socket) -> tuple[int, dict, bytes]:
    """One whole answer (with a content-length) on a connection that stays open."""
    data = b""
    while b"\r\n\r\n" not in data or len(data.partition(b"\r\n\r\n")[2]) < int(
            split_answer(data)[1]["content-length"]):
        data += sock.recv(65536)
    return split_answer(data)


def test_stalled_headers_get_408_and_are_closed_while_health_answers(checkpoint):
    _, thread = serve(checkpoint)
    with thread as url:
        half = connect(url)
        half.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0")  # half a header line, then nothing
        silent = connect(url)  # sends nothing at all
        start = time.monotonic()
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200
        for sock in (half, silent):
            status, headers, body = split_answer(read_until_closed(sock, DEADLINE + SLACK))
            assert status == 408 and headers["connection"] == "close"
            assert json.loads(body) == {"error": f"the request headers did not arrive within {DEADLINE:g} s"}
        assert DEADLINE * 0.8 <= time.monotonic() - start <= DEADLINE + SLACK
        assert httpx.get(f"{url}/health", timeout=10).status_code == 200


def test_a_kept_alive_connection_that_stalls_in_its_next_headers_is_closed(checkpoint):
    """Between requests uvicorn's keep-alive timeout (30 s here) governs; once the next request's first bytes
    arrive, its headers have the header deadline."""
    _, thread = serve(checkpoint)
    with thread as url, connect(url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_answer(sock)[0] == 200
        time.sleep(DEADLINE * 2)  # an idle kept-alive connection is not cut by the header deadline
        sock.sendall(b"GET /health HTTP/1.1\r\nHo")
        status, _, _ = split_answer(read_until_closed(sock, DEADLINE + SLACK))
        assert status == 408


def test_a_body_answered_unread_has_the_header_deadline_to_end(checkpoint):
    """A route that reads no body (or refuses before reading it) answers at once; the client then has the header
    deadline to finish sending the body, else the connection is closed."""
    _, thread = serve(checkpoint)
    with thread as url, connect(url) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 500\r\n\r\n{")
        assert read_answer(sock)[0] == 200
        start = time.monotonic()
        try:
            while time.monotonic() - start < DEADLINE + SLACK:
                sock.sendall(b" ")  # one byte every 0.1 s
                if select.select([sock], [], [], 0.1)[0]:
                    break
        except OSError:  # closed while sending
            pass
        assert read_until_closed(sock, SLACK) == b""
        assert DEADLINE * 0.8 <= time.monotonic() - start <= DEADLINE + SLACK


def test_idle_sockets_beyond_the_concurrency_limit_are_cut_and_health_answers_again(checkpoint):
    _, thread = serve(checkpoint, limit_concurrency=3)
    with thread as url:
        idle = [connect(url) for _ in range(5)]
        time.sleep(0.1)  # let the server accept them
        assert httpx.get(f"{url}/health", timeout=10).status_code == 503  # the excess is refused at once
        deadline, status = time.monotonic() + DEADLINE + SLACK, None
        while status != 200 and time.monotonic() < deadline:
            time.sleep(0.1)
            status = httpx.get(f"{url}/health", timeout=10).status_code
        assert status == 200, "the idle sockets were not cut"
        for sock in idle:
            assert split_answer(read_until_closed(sock, SLACK))[0] == 408
            sock.close()


@pytest.mark.parametrize("path", ["/v1/classify", "/v1/completions"])
def test_a_trickled_body_gets_408_and_the_connection_is_closed(checkpoint, path):
    _, thread = serve(checkpoint)
    with thread as url, connect(url) as sock:
        sock.sendall(f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                     f"Content-Length: 500\r\n\r\n{{".encode())
        start, answered = time.monotonic(), False
        while not answered and time.monotonic() - start < DEADLINE + SLACK:
            sock.sendall(b" ")  # one byte every 0.1 s: 500 bytes would take 50 s
            answered = bool(select.select([sock], [], [], 0.1)[0])
        assert answered, "no answer while the body trickled in"
        assert DEADLINE * 0.8 <= time.monotonic() - start
        status, headers, body = split_answer(read_until_closed(sock, SLACK))
        assert status == 408 and headers["connection"] == "close"
        error = json.loads(body)["error"]
        message = error if path == "/v1/classify" else error["message"]
        assert message.startswith(f"the body did not arrive within {DEADLINE:g} s")


def test_a_full_queue_answers_503_with_retry_after_at_once(checkpoint, monkeypatch):
    import ptune.serving.batcher as batcher_module

    entered, release = threading.Event(), threading.Event()
    real = batcher_module.predict_rows

    def slow_predict(task, rows, max_new_tokens):  # the model thread is busy until the test releases it
        entered.set()
        release.wait(30)
        return real(task, rows, max_new_tokens)

    monkeypatch.setattr(batcher_module, "predict_rows", slow_predict)
    app, thread = serve(checkpoint, Limits(max_queue=2, mix_tasks=False, batch_wait_ms=1))
    row = {"text": "the parcel never came"}
    with thread as url, ThreadPoolExecutor(2) as pool:
        classify = lambda rows: httpx.post(f"{url}/v1/classify", json={"task": "complaints", "rows": rows},
                                           timeout=60)
        running = pool.submit(classify, [row])  # taken by the model thread
        assert entered.wait(30)
        queued = pool.submit(classify, [row, row])  # waits: the queue now holds its limit, 2 rows
        deadline = time.monotonic() + 10
        while app.state.batcher.queued_rows < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        start = time.monotonic()
        refused = classify([row])
        openai = httpx.post(f"{url}/v1/completions", json={"model": "complaints", "prompt": "late again"},
                            timeout=60)
        assert time.monotonic() - start < SLACK  # refused at once, not after the model frees up
        release.set()
        assert running.result().status_code == 200 and queued.result().status_code == 200
    assert refused.status_code == 503 and int(refused.headers["retry-after"]) >= 1
    assert refused.json()["error"].startswith("the server is busy: 2 rows are waiting for the model")
    assert openai.status_code == 503 and int(openai.headers["retry-after"]) >= 1
    assert openai.json()["error"]["type"] == "server_error" and openai.json()["error"]["code"] == "server_busy"


def test_the_limits_answers_are_in_the_openapi_document(checkpoint):
    app, _ = serve(checkpoint)
    paths = app.openapi()["paths"]
    for path in ("/v1/classify", "/v1/generate", "/v1/completions", "/v1/chat/completions"):
        assert {"408", "503"} <= set(paths[path]["post"]["responses"]), path
