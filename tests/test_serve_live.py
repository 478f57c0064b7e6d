"""Tasks added and removed while serving (--tasks-dir): only from inside the directory, only for the same base
model, only with the key; requests in flight finish."""

import os
import shutil
import threading
import time

import pytest

from serve_helpers import make_checkpoint

httpx = pytest.importorskip("httpx")

from ptune.serving.app import create_app  # noqa: E402
from ptune.serving.protocol import Limits  # noqa: E402
from ptune.serving.thread import ServerThread  # noqa: E402

KEY = {"Authorization": "Bearer live-key"}
CLASSIFY = "[P*3] Tweet text : {text} Label : [TARGET]"
VERBALIZER = {"complaint": "complaint", "no complaint": "no complaint"}


@pytest.fixture(scope="module")
def layout(tiny_causal_dir, tiny_masked_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("live")
    tasks_dir = root / "tasks"
    served = make_checkpoint(tiny_causal_dir, tasks_dir / "complaints", CLASSIFY, verbalizer=VERBALIZER)
    make_checkpoint(tiny_causal_dir, tasks_dir / "more" / "reply", "[P*2] {text} Label : [TARGET]",
                    task_type="generation")
    make_checkpoint(tiny_masked_dir, tasks_dir / "other-base", "[P*2] {text} [TARGET]", verbalizer=VERBALIZER)
    outside = make_checkpoint(tiny_causal_dir, root / "outside", CLASSIFY, verbalizer=VERBALIZER)
    os.symlink(outside, tasks_dir / "link-out")
    os.symlink(tasks_dir / "more" / "reply", tasks_dir / "link-in")
    return tasks_dir, served, outside


@pytest.fixture(scope="module")
def server(layout):
    tasks_dir, served, _ = layout
    app = create_app({"complaints": served}, api_keys=["live-key"], tasks_dir=tasks_dir)
    with ServerThread(app) as url:
        with httpx.Client(base_url=url, timeout=60, headers=KEY) as client:
            yield client


def names(client):
    return [t["name"] for t in client.get("/v1/tasks").json()["tasks"]]


def test_add_use_and_remove_a_task(server):
    client = server
    r = client.post("/v1/tasks", json={"name": "reply", "path": "more/reply"})
    assert r.status_code == 201, r.text
    assert r.json()["task"]["type"] == "generation" and names(client) == ["complaints", "reply"]
    r = client.post("/v1/generate", json={"task": "reply", "rows": [{"text": "hello"}], "max_new_tokens": 3})
    assert r.status_code == 200, r.text
    assert "reply" in [m["id"] for m in client.get("/v1/models").json()["data"]]
    assert client.post("/v1/tasks", json={"name": "reply", "path": "more/reply"}).status_code == 409
    r = client.post("/v1/tasks", json={"name": "via-link", "path": "link-in"})  # a symlink that stays inside
    assert r.status_code == 201, r.text
    for name in ("reply", "via-link"):
        assert client.delete(f"/v1/tasks/{name}").json() == {"deleted": name}
    assert names(client) == ["complaints"]
    r = client.post("/v1/generate", json={"task": "reply", "rows": [{"text": "hello"}]})
    assert r.status_code == 404
    assert client.delete("/v1/tasks/reply").status_code == 404


@pytest.mark.parametrize("path, status, message", [
    ("../outside", 403, "outside the tasks directory"),
    ("link-out", 404, "no checkpoint directory"),  # outside through a symlink: said like a missing path
    ("{outside}", 403, "outside the tasks directory"),
    ("more/../../outside", 403, "outside the tasks directory"),
    ("missing", 404, "no checkpoint directory"),
    ("", 422, "'path' must be a non-empty string"),
    ("complaints/manifest.json", 404, "no checkpoint directory"),
    ("more", 404, "no checkpoint at 'more' in the tasks directory: the folder holds no ptune.json"),
])
def test_paths_outside_the_directory_are_refused(server, layout, path, status, message):
    _, _, outside = layout
    r = server.post("/v1/tasks", json={"name": "x", "path": path.format(outside=outside)})
    assert r.status_code == status, r.text
    assert message in r.json()["error"]
    assert names(server) == ["complaints"]


def test_a_checkpoint_for_another_base_model_is_refused_with_the_reason(server, layout):
    r = server.post("/v1/tasks", json={"name": "bert", "path": "other-base"})
    assert r.status_code == 422 and "checkpoint other-base was trained on" in r.json()["error"]
    assert str(layout[0]) not in r.text and "'/" not in r.text  # the server's own paths stay out of its answers
    assert names(server) == ["complaints"]


def test_an_unusable_checkpoint_is_named_relative_to_the_tasks_directory(server, layout):
    tasks_dir, served, _ = layout
    broken = shutil.copytree(served, tasks_dir / "more" / "broken")
    (broken / "ptune.json").write_text("{not json")
    for path in ("more/broken", str(broken)):  # relative or absolute, the answer names it alike
        r = server.post("/v1/tasks", json={"name": "broken", "path": path})
        assert r.status_code == 422 and r.json()["error"].startswith("more/broken/ptune.json: corrupted manifest")
        assert str(tasks_dir) not in r.text and str(tasks_dir.resolve()) not in r.text
    assert names(server) == ["complaints"]


@pytest.mark.parametrize("body", [{"name": "bad name", "path": "more/reply"}, {"name": "x"}, [1],
                                  {"name": "x", "path": "more/reply", "extra": 1}])
def test_bad_add_bodies(server, body):
    assert server.post("/v1/tasks", json=body).status_code == 422


def test_adding_and_removing_need_the_key(server):
    url = str(server.base_url)
    assert httpx.post(url + "/v1/tasks", json={"name": "reply", "path": "more/reply"}).status_code == 401
    assert httpx.delete(url + "/v1/tasks/complaints").status_code == 401
    assert names(server) == ["complaints"]


def test_requests_in_flight_finish_after_their_task_is_removed(layout):
    tasks_dir, served, _ = layout
    # the batcher holds each request for 1.5 s, so the task goes while its request waits
    app = create_app({"complaints": served}, tasks_dir=tasks_dir, limits=Limits(batch_wait_ms=1500))
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert client.post("/v1/tasks", json={"name": "doomed", "path": "more/reply"}).status_code == 201
        answer = {}

        def request():
            answer["r"] = client.post("/v1/generate", json={"task": "doomed", "rows": [{"text": "hi"}] * 4})

        thread = threading.Thread(target=request)
        thread.start()
        deadline = time.monotonic() + 30
        while client.get("/health").json()["stats"]["requests"] == 0:  # not yet received
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert client.delete("/v1/tasks/doomed").status_code == 200
        assert client.get("/health").json()["stats"]["batches"] == 0  # still waiting in the batcher
        thread.join(60)
        assert answer["r"].status_code == 200 and len(answer["r"].json()["predictions"]) == 4
        assert client.post("/v1/generate", json={"task": "doomed", "rows": [{"text": "hi"}]}).status_code == 404


def test_without_a_tasks_dir_tasks_are_fixed(layout):
    _, served, _ = layout
    with ServerThread(create_app({"complaints": served})) as url:
        r = httpx.post(url + "/v1/tasks", json={"name": "reply", "path": "more/reply"}, timeout=60)
        assert r.status_code == 403 and "--tasks-dir" in r.json()["error"]
        assert httpx.delete(url + "/v1/tasks/complaints", timeout=60).status_code == 403


def test_a_missing_tasks_dir_is_said_before_any_model_loads(tmp_path):
    from ptune.errors import PtuneError

    with pytest.raises(PtuneError, match="is not a directory"):
        create_app({"x": tmp_path / "no-checkpoint"}, tasks_dir=tmp_path / "nowhere")
