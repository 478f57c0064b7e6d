"""The HTTP server, started for real (uvicorn on 127.0.0.1, a free port) and spoken to over HTTP with httpx."""

import json
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
from click.testing import CliRunner

from conftest import ROWS, write_csv
from ptune.errors import PtuneError
from serve_helpers import standard_checkpoints

httpx = pytest.importorskip("httpx")
pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

from ptune.serving.app import create_app  # noqa: E402
from ptune.serving.protocol import Limits  # noqa: E402
from ptune.serving.tasks import parse_checkpoint_args  # noqa: E402
from ptune.serving.thread import ServerThread  # noqa: E402

TEXTS = [t for t, _ in ROWS]


@pytest.fixture(scope="module")
def checkpoints(tiny_causal_dir, tmp_path_factory):
    return standard_checkpoints(tiny_causal_dir, tmp_path_factory.mktemp("serve"))


@pytest.fixture(scope="module")
def server(checkpoints):
    app = create_app(checkpoints, limits=Limits(max_rows=8, max_field_chars=200, max_body_bytes=20_000,
                                                batch_wait_ms=20))
    with ServerThread(app) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client, app


def test_health_and_tasks(server):
    client, _ = server
    assert client.get("/health").json()["status"] == "ok"
    tasks = {t["name"]: t for t in client.get("/v1/tasks").json()["tasks"]}
    assert set(tasks) == {"complaints", "sentiment", "reply"}
    assert tasks["complaints"]["labels"] == ["complaint", "no complaint"]
    assert tasks["sentiment"]["template"] == "{text} [P*2] It was [TARGET]"
    assert tasks["reply"]["type"] == "generation" and tasks["reply"]["fields"] == ["text"]


def test_one_base_model_shared_by_all_tasks(server):
    _, app = server
    bases = {id(t.predictor.session.base.model) for t in app.state.tasks.values()}
    assert len(bases) == 1


def test_classify_labels_equal_ptune_predict(server, checkpoints, tmp_path):
    from ptune.cli import main

    client, _ = server
    data = write_csv(tmp_path / "rows.csv", [(t,) for t in TEXTS], header=("text",))
    for name in ("complaints", "sentiment"):
        res = CliRunner().invoke(main, ["predict", str(checkpoints[name]), "--data", str(data),
                                        "--out", str(tmp_path / f"{name}.jsonl"), "--quiet"])
        assert res.exit_code == 0, res.output
        expected = [json.loads(l) for l in (tmp_path / f"{name}.jsonl").read_text().splitlines()]
        r = client.post("/v1/classify", json={"task": name, "rows": [{"text": t} for t in TEXTS]})
        assert r.status_code == 200, r.text
        got = r.json()["predictions"]
        assert [g["label"] for g in got] == [e["prediction"] for e in expected]
        for g, e in zip(got, expected):
            assert set(g["scores"]) == set(e["scores"])
            assert all(abs(g["scores"][k] - e["scores"][k]) < 1e-3 for k in e["scores"])


def test_generate(server, checkpoints):
    from ptune.inference import Predictor

    client, _ = server
    rows = [{"text": t} for t in TEXTS[:3]]
    r = client.post("/v1/generate", json={"task": "reply", "rows": rows, "max_new_tokens": 5})
    assert r.status_code == 200, r.text
    expected = Predictor.load(checkpoints["reply"]).predict_rows(rows)
    assert [p["text"] for p in r.json()["predictions"]] == [e["prediction"] for e in expected]
    r = client.post("/v1/generate", json={"task": "reply", "rows": rows, "max_new_tokens": 1})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 3


@pytest.mark.parametrize("path, body, status, message", [
    ("/v1/classify", {"task": "nope", "rows": [{"text": "a"}]}, 404, "unknown task 'nope'"),
    ("/v1/classify", {"task": "complaints", "rows": [{"txt": "a"}]}, 422, "rows[0] lacks field 'text'"),
    ("/v1/classify", {"task": "complaints", "rows": []}, 422, "'rows' is empty"),
    ("/v1/classify", {"task": "complaints"}, 422, "'rows' is missing"),
    ("/v1/classify", {"task": "complaints", "rows": [{"text": "  "}]}, 422, "rows[0].text is empty"),
    ("/v1/classify", {"task": "complaints", "rows": [{"text": "x" * 201}]}, 413, "the limit is 200"),
    ("/v1/classify", {"task": "complaints", "rows": [{"text": "a"}] * 9}, 413, "too many rows: 9"),
    ("/v1/classify", {"task": "complaints", "rows": [{"text": {"file": "/etc/passwd"}}]}, 422, "must be a string"),
    ("/v1/classify", {"task": "complaints", "rows": ["text"]}, 422, "rows[0] must be an object"),
    ("/v1/classify", {"task": "complaints", "rows": [{"text": "a"}], "extra": 1}, 422, "unknown key(s) 'extra'"),
    ("/v1/classify", {"task": "reply", "rows": [{"text": "a"}]}, 400, "use /v1/generate"),
    ("/v1/generate", {"task": "complaints", "rows": [{"text": "a"}]}, 400, "use /v1/classify"),
    ("/v1/generate", {"task": "reply", "rows": [{"text": "a"}], "max_new_tokens": 10 ** 9}, 422, "max_new_tokens"),
    ("/v1/generate", {"task": "reply", "rows": [{"text": "a"}], "max_new_tokens": "5"}, 422, "max_new_tokens"),
    ("/v1/classify", [1, 2], 400, "must be a JSON object"),
])
def test_bad_requests_get_a_clear_4xx(server, path, body, status, message):
    client, _ = server
    r = client.post(path, json=body)
    assert r.status_code == status, r.text
    assert message in r.json()["error"]


def test_malformed_and_oversized_bodies(server):
    client, _ = server
    r = client.post("/v1/classify", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
    as_json = {"content-type": "application/json"}
    r = client.post("/v1/classify", content=b"[" * 5000 + b"]" * 5000, headers=as_json)  # deep nesting
    assert r.status_code in (400, 422)
    big = json.dumps({"task": "complaints", "rows": [{"text": "a" * 30_000}]})
    r = client.post("/v1/classify", content=big, headers=as_json)
    assert r.status_code == 413 and "larger than" in r.json()["error"]

    def chunks():  # no content-length: the limit is enforced while reading
        for _ in range(30):
            yield b" " * 1000

    r = client.post("/v1/classify", content=chunks(), headers=as_json)
    assert r.status_code == 413
    assert client.get("/nope").status_code == 404
    assert client.get("/health").json()["status"] == "ok"  # still serving


def test_numbers_python_cannot_read_are_a_400_not_a_500(server):
    client, _ = server
    huge = b'{"task": "complaints", "rows": [{"text": ' + b"9" * 5000 + b"}]}"  # past int()'s 4300-digit limit
    for path in ("/v1/classify", "/v1/completions"):
        r = client.post(path, content=huge, headers={"content-type": "application/json"})
        assert r.status_code == 400 and "not valid JSON" in r.text
    r = client.post("/v1/classify", json={"task": "complaints", "rows": [{"text": 12345}]})
    assert r.status_code == 200  # a number is written out


def test_concurrent_requests_are_batched_and_answered_in_order(server):
    client, app = server
    expected = {}
    for name in ("complaints", "sentiment"):
        r = client.post("/v1/classify", json={"task": name, "rows": [{"text": t} for t in TEXTS]})
        expected[name] = [p["label"] for p in r.json()["predictions"]]
    before = client.get("/health").json()["stats"]
    results, errors = {}, []

    def worker(i):
        name = ("complaints", "sentiment")[i % 2]
        idx = [(i + j) % len(TEXTS) for j in range(1 + i % 3)]
        try:
            r = client.post("/v1/classify", json={"task": name, "rows": [{"text": TEXTS[k]} for k in idx]})
            results[i] = (name, idx, [p["label"] for p in r.json()["predictions"]])
        except Exception as err:  # noqa: BLE001
            errors.append(err)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors and len(results) == 16
    for name, idx, labels in results.values():
        assert labels == [expected[name][k] for k in idx]
    after = client.get("/health").json()["stats"]
    assert after["requests"] - before["requests"] == 16
    assert after["batches"] - before["batches"] < 16  # requests that arrived together shared model calls
    assert after["mixed_batches"] > before["mixed_batches"]  # and rows of both tasks shared a model call


def test_mixed_task_scoring_equals_each_tasks_own(checkpoints, tmp_path):
    import torch

    from ptune.inference import Predictor
    from ptune.tasks.mixed import classify_mixed

    a = Predictor.load(checkpoints["complaints"])
    b = Predictor.load(checkpoints["sentiment"], base=a.session.base)
    b.session.task.cfg.calibrate = "content_free"  # per-task post-processing still applies
    long_row = {"text": "the box was broken again " * 20}  # truncated: takes its task's own path
    rows_a = [{"text": t} for t in TEXTS] + [long_row]
    rows_b = [{"text": t} for t in reversed(TEXTS)]
    with torch.inference_mode():
        mixed = classify_mixed([(a.session.task, a.model, rows_a), (b.session.task, b.model, rows_b)], 4, "cpu")
    for (p, rows), got in zip(((a, rows_a), (b, rows_b)), mixed):
        want = p.predict_rows(rows)
        assert [g["prediction"] for g in got] == [w["prediction"] for w in want]
        for g, w in zip(got, want):
            assert g["scores"] == pytest.approx(w["scores"], abs=2e-3)


def test_checkpoint_arguments():
    assert parse_checkpoint_args(["a=/x/ckpt", "/y/other"]) == {"a": "/x/ckpt", "other": "/y/other"}
    with pytest.raises(PtuneError, match="two checkpoints are named 'ckpt'"):
        parse_checkpoint_args(["/x/ckpt", "/y/ckpt"])
    with pytest.raises(PtuneError, match="task name"):
        create_app({"bad name!": "/nowhere"})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_ptune_serve_command(checkpoints):
    port = _free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "ptune", "serve", f"c={checkpoints['complaints']}",
                             str(checkpoints["reply"]), "--host", "127.0.0.1", "--port", str(port)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env)
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                r = httpx.get(f"http://127.0.0.1:{port}/v1/tasks", timeout=5)
                break
            except httpx.TransportError:
                assert proc.poll() is None, proc.stdout.read().decode()
                assert time.monotonic() < deadline, "ptune serve did not start"
                time.sleep(0.2)
        assert [t["name"] for t in r.json()["tasks"]] == ["c", "reply"]
        r = httpx.post(f"http://127.0.0.1:{port}/v1/classify", json={"task": "c", "rows": [{"text": "hello"}]})
        assert r.status_code == 200, r.text
        assert r.json()["predictions"][0]["label"] in ("complaint", "no complaint")
    finally:
        proc.terminate()
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
        print(out.decode(errors="replace")[-3000:])  # shown when the test fails


def test_openapi_schema_declares_the_endpoints(server):
    client, _ = server
    schema = client.get("/openapi.json").json()
    classify = schema["paths"]["/v1/classify"]["post"]
    body = classify["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["task", "rows"] and "max_new_tokens" not in body["properties"]
    assert "max_new_tokens" in schema["paths"]["/v1/generate"]["post"]["requestBody"]["content"][
        "application/json"]["schema"]["properties"]
    assert {"200", "404", "413", "422"} <= set(classify["responses"])
    assert {"/health", "/v1/tasks"} <= set(schema["paths"])
