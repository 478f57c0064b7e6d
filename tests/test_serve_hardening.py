"""Tasks added while serving (--tasks-dir) cannot be abused: every failure is a JSON answer naming its cause and no
path of the server; paths and files outside the tasks directory are refused alike whether or not they exist;
names are checked in full; the number of tasks is bounded; a checkpoint added twice keeps one device table; the
OpenAPI document is built once per change of the task set; the files are read off the model thread."""

import json
import os
import re
import shutil
import threading
from pathlib import Path

import pytest

from serve_helpers import make_checkpoint

httpx = pytest.importorskip("httpx")

from ptune.serving.app import create_app  # noqa: E402
from ptune.serving.protocol import Limits  # noqa: E402
from ptune.serving.thread import ServerThread  # noqa: E402

CLASSIFY = "[P*3] Tweet text : {text} Label : [TARGET]"
VERBALIZER = {"complaint": "complaint", "no complaint": "no complaint"}
WORDS = ["hello", "world", "great", "box", "order", "refund", "store", "app", "Paris", "France"]
ABSOLUTE = re.compile(r"(?<![\w.:/-])/[^\s'\"]")
"""An absolute path anywhere in a text."""


def edit_manifest(folder: Path, change) -> Path:
    meta = json.loads((folder / "ptune.json").read_text())
    change(meta)
    (folder / "ptune.json").write_text(json.dumps(meta))
    return folder


def prompts_file(folder: Path) -> Path:
    return folder / json.loads((folder / "ptune.json").read_text())["files"]["prompts"]["file"]


@pytest.fixture(scope="module")
def layout(tiny_causal_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("hardening")
    tasks = root / "tasks"
    served = make_checkpoint(tiny_causal_dir, tasks / "complaints", CLASSIFY, verbalizer=VERBALIZER)
    make_checkpoint(tiny_causal_dir, root / "elsewhere", CLASSIFY, verbalizer=VERBALIZER)
    os.symlink(root / "elsewhere", tasks / "link-out")
    os.symlink(root / "nowhere", tasks / "link-nowhere")
    (root / "words.json").write_text(json.dumps(WORDS))
    probe = tasks / "probe"
    probe.mkdir()
    (probe / "words.json").write_text(json.dumps(WORDS))
    make_checkpoint(tiny_causal_dir, probe, "[P*2] {text} [TARGET]", task_type="probing",
                    vocab_file=str(probe / "words.json"))
    return root, tasks, served


def copy_of(layout, name: str, source: str = "complaints") -> Path:
    _, tasks, _ = layout
    return shutil.copytree(tasks / source, tasks / name, symlinks=True)


@pytest.fixture(scope="module")
def server(layout):
    _, tasks, served = layout
    app = create_app({"complaints": served}, tasks_dir=tasks)
    with ServerThread(app) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            client.app = app
            yield client


def add(client, name, path):
    return client.post("/v1/tasks", json={"name": name, "path": str(path)})


def refused(r, status: int, *words: str) -> str:
    """The JSON error of a refused add, checked: its status, the words it must say, no path of the server."""
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/json", r.text
    error = r.json()["error"]
    for word in words:
        assert word in error, error
    assert not ABSOLUTE.search(error), error
    return error


@pytest.mark.parametrize("change, field", [
    (lambda m: m.update(label_offsets={"complaint": "abc", "no complaint": 0.5}), "label_offsets"),
    (lambda m: m.update(label_offsets=[1, 2]), "label_offsets"),
    (lambda m: m.update(label_offsets={"complaint": float("nan"), "no complaint": 0.5}), "label_offsets"),
    (lambda m: m.update(labels={"complaint": 5, "no complaint": "no"}), "ptune.json"),
    (lambda m: m.update(labels={"complaint": ["complaint", 3], "no complaint": "no"}), "ptune.json"),
    (lambda m: m.update(labels=["complaint"]), "ptune.json"),
    (lambda m: m["config"]["task"].update(template=5), "ptune.json"),
    (lambda m: m["files"]["prompts"].pop("sha256"), "ptune.json"),
    (lambda m: m.update(n_virtual="3"), "prompt table shape"),
    (lambda m: m["base"].update(vocab_size="x"), "vocab_size x"),
])
def test_a_crafted_manifest_is_a_json_422_naming_the_field(server, layout, change, field):
    folder = edit_manifest(copy_of(layout, "crafted"), change)
    try:
        error = refused(add(server, "crafted", "crafted"), 422, field)
        assert re.search(r"(^| )crafted[/: ]", error), error  # the checkpoint, named as the client named it
    finally:
        shutil.rmtree(folder)
    assert "crafted" not in [t["name"] for t in server.get("/v1/tasks").json()["tasks"]]


def test_a_file_the_server_cannot_read_is_a_json_422(server, layout, monkeypatch):
    locked = prompts_file(copy_of(layout, "locked"))
    real_bytes, real_text = Path.read_bytes, Path.read_text

    def denied(real):  # the tests run as root, which chmod 000 would not stop
        def read(self, *args, **kwargs):
            if self.name == locked.name and self.parent.name == "locked":
                raise PermissionError(13, "Permission denied", str(self))
            return real(self, *args, **kwargs)
        return read

    monkeypatch.setattr(Path, "read_bytes", denied(real_bytes))
    monkeypatch.setattr(Path, "read_text", denied(real_text))
    refused(add(server, "locked", "locked"), 422, "cannot read", f"locked/{locked.name}", "Permission denied")


def test_no_answer_holds_an_absolute_path_of_the_server(server, layout, tiny_causal_dir):
    root, tasks, _ = layout
    bad_words = copy_of(layout, "bad-words", "probe")
    (bad_words / "words.json").write_text("not json")
    edit_manifest(bad_words, lambda m: m["config"]["task"].update(vocab_file=str(bad_words / "words.json")))
    answers = [add(server, "bad-words", "bad-words"), add(server, "bad-words", str(bad_words)),
               add(server, "x", str(root / "elsewhere")), add(server, "x", str(tasks / "missing"))]
    assert "bad-words/words.json: cannot read the vocabulary file" in answers[0].json()["error"]
    assert answers[0].json() == answers[1].json()  # relative or absolute, the answer names it alike
    for r in answers:
        assert 400 <= r.status_code < 500, r.text
        for path in (root, root.resolve(), tiny_causal_dir):
            assert str(path) not in r.text
        assert not ABSOLUTE.search(r.json()["error"]), r.text


def test_an_unforeseen_fault_while_adding_is_a_json_500_naming_its_kind(server, layout, monkeypatch):
    store = server.app.state.serving.store
    secret = layout[1] / "complaints"

    def fault(*args):
        raise RuntimeError(f"device fault near {secret}")

    monkeypatch.setattr(store, "serve", fault)
    error = refused(add(server, "faulty", "complaints"), 500, "RuntimeError", "still running")
    assert "complaints" not in error  # the fault's own text (and the path in it) stays in the log
    monkeypatch.undo()
    assert add(server, "faulty", "complaints").status_code == 201  # nothing was left half added
    assert server.delete("/v1/tasks/faulty").status_code == 200


def test_prediction_errors_name_no_absolute_path(server, layout, monkeypatch):
    from ptune.errors import DataError

    batcher = server.app.state.serving.batcher
    words = layout[1].resolve() / "probe" / "words.json"

    async def submit(*args):
        raise DataError(f"{words}: cannot read the vocabulary file (and /opt/models/llama is not it)")

    monkeypatch.setattr(batcher, "submit", submit)
    r = server.post("/v1/classify", json={"task": "complaints", "rows": [{"text": "hello"}]})
    assert r.status_code == 422 and r.json()["error"] == \
        "probe/words.json: cannot read the vocabulary file (and llama is not it)"


def test_public_messages_name_files_by_their_last_part_only():
    from ptune.serving.paths import public_message

    root = Path("/srv/tasks")
    assert public_message("/srv/tasks/a/words.json: cannot read the vocabulary file", root) == \
        "a/words.json: cannot read the vocabulary file"
    assert public_message("trained on /srv/models/llama (sha 12), not on '/opt/m/bert'", root) == \
        "trained on llama (sha 12), not on 'bert'"
    assert public_message("/srv/tasks2/x and /srv/tasks, see http://host/doc", root) == "x and ., see http://host/doc"


def test_paths_outside_the_directory_get_one_answer_whether_or_not_they_exist(server, layout):
    root, _, _ = layout
    pairs = [("../elsewhere", "../nowhere"), (str(root / "elsewhere"), str(root / "nowhere")),
             ("complaints/../../elsewhere", "complaints/../../nowhere"), ("link-out", "link-nowhere"),
             ("link-out", "missing"), ("link-out/ptune.json", "link-nowhere/ptune.json")]
    for there, missing in pairs:  # each pair differs only in whether the path exists
        a, b = add(server, "x", there), add(server, "x", missing)
        said = [r.json()["error"].replace(p.rsplit("/", 1)[-1] if p.startswith("/") else p, "PATH")
                for r, p in ((a, there), (b, missing))]
        assert (a.status_code, said[0]) == (b.status_code, said[1]), (a.text, b.text)
        assert a.status_code in (403, 404)


def test_a_tensor_file_symlinked_outside_is_refused(server, layout):
    root, _, _ = layout
    for name, target in (("linked", prompts_file(root / "elsewhere")), ("dangling", root / "no-such.safetensors")):
        prompts = prompts_file(copy_of(layout, name))
        prompts.unlink()
        os.symlink(target, prompts)  # the right bytes (or none) behind a link out of the directory
        refused(add(server, name, name), 422, f"{name}/{prompts.name}", "outside the tasks directory")


def test_a_vocabulary_file_outside_is_refused(server, layout):
    root, _, _ = layout
    outside_words = str(root / "words.json")
    edit_manifest(copy_of(layout, "vocab-out", "probe"),
                  lambda m: m["config"]["task"].update(vocab_file=outside_words))
    refused(add(server, "vocab-out", "vocab-out"), 422, "vocab-out/ptune.json", "task.vocab_file",
            "outside the tasks directory")
    linked = edit_manifest(copy_of(layout, "vocab-link", "probe"),
                           lambda m: m["config"]["task"].update(vocab_file="words.json"))
    (linked / "words.json").unlink()
    os.symlink(outside_words, linked / "words.json")
    refused(add(server, "vocab-link", "vocab-link"), 422, "vocab-link/words.json", "outside the tasks directory")
    relative = edit_manifest(copy_of(layout, "vocab-here", "probe"),
                             lambda m: m["config"]["task"].update(vocab_file="words.json"))
    r = add(server, "vocab-here", relative.name)  # a word list named relative to its checkpoint: served
    assert r.status_code == 201, r.text
    assert server.delete("/v1/tasks/vocab-here").status_code == 200


@pytest.mark.parametrize("name", [".", "..", "...", "a\n", "a\r\n", "a b", "x" * 65, ""])
def test_names_are_checked_in_full(server, name):
    refused(add(server, name, "complaints"), 422, "'name' must be")


@pytest.mark.parametrize("arg", ["..=ckpt", ".=ckpt", "a\n=ckpt"])
def test_command_line_names_are_checked_in_full(arg):
    from ptune.errors import PtuneError
    from ptune.serving.tasks import parse_checkpoint_args

    with pytest.raises(PtuneError, match="task name"):
        parse_checkpoint_args([arg])


def test_adds_beyond_max_tasks_are_refused_with_the_limit(layout):
    _, tasks, served = layout
    app = create_app({"complaints": served}, tasks_dir=tasks, limits=Limits(max_tasks=2))
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        assert add(client, "second", "complaints").status_code == 201
        error = refused(add(client, "third", "complaints"), 409, "--max-tasks 2")
        assert "2 tasks" in error
        assert client.delete("/v1/tasks/second").status_code == 200
        assert add(client, "third", "complaints").status_code == 201


def test_one_checkpoint_under_two_names_keeps_one_device_table(server):
    tasks = server.app.state.serving.tasks
    assert add(server, "again", "complaints").status_code == 201
    try:
        assert tasks["again"] is not tasks["complaints"]
        assert tasks["again"].table is tasks["complaints"].table
        r = server.post("/v1/classify", json={"task": "again", "rows": [{"text": "hello world"}]})
        assert r.json() == server.post("/v1/classify", json={"task": "complaints",
                                                             "rows": [{"text": "hello world"}]}).json()
    finally:
        server.delete("/v1/tasks/again")


def test_the_openapi_document_is_built_once_per_change_of_the_task_set(server, monkeypatch):
    from ptune.serving import openapi

    builds = []
    real = openapi.request_bodies
    monkeypatch.setattr(openapi, "request_bodies", lambda state: builds.append(1) or real(state))

    def enum_has(name):
        doc = server.get("/openapi.json").json()
        return name in json.dumps(doc["paths"]["/v1/classify"]["post"]["requestBody"])

    first = [enum_has("later") for _ in range(3)]
    assert first == [False] * 3 and len(builds) <= 1
    before = len(builds)
    assert add(server, "later", "complaints").status_code == 201
    assert [enum_has("later") for _ in range(3)] == [True] * 3 and len(builds) == before + 1
    assert server.delete("/v1/tasks/later").status_code == 200
    assert [enum_has("later") for _ in range(3)] == [False] * 3 and len(builds) == before + 2


def test_files_are_read_off_the_model_thread(server, monkeypatch):
    import ptune.checkpoint

    readers = []
    real = ptune.checkpoint.load_tables

    def load_tables(*args, **kwargs):
        readers.append(threading.current_thread().name)
        return real(*args, **kwargs)

    monkeypatch.setattr(ptune.checkpoint, "load_tables", load_tables)
    assert add(server, "off-thread", "complaints").status_code == 201
    server.delete("/v1/tasks/off-thread")
    assert len(readers) == 1 and not readers[0].startswith("ptune-model"), readers


def test_checkpoints_served_from_the_tasks_directory_at_start_keep_their_files_inside(layout):
    """The checkpoints a server finds in --tasks-dir at start pass the same file checks as tasks added later."""
    from ptune.errors import PtuneError
    from ptune.serving.tasks import checkpoints_to_serve

    root, tasks, _ = layout
    start = root / "start"
    shutil.copytree(tasks / "complaints", start / "complaints", symlinks=True)
    prompts = prompts_file(start / "complaints")
    prompts.unlink()
    os.symlink(prompts_file(root / "elsewhere"), prompts)  # the right bytes, behind a link out of the directory
    found, _ = checkpoints_to_serve(start)
    with pytest.raises(PtuneError, match="outside the tasks directory"):
        create_app(found, tasks_dir=start)


def test_a_zero_shot_checkpoint_is_served(tiny_causal_dir, tmp_path):
    """A search may choose the manual prompt itself and save it with no virtual token: it serves like the rest."""
    from serve_helpers import tiny_config

    from ptune.session import open_session
    from ptune.training.saving import save_inference

    task = {"type": "classification", "template": "Tweet text : {text} Label : [TARGET]", "verbalizer": VERBALIZER}
    session = open_session(tiny_config(tiny_causal_dir, task=task), allow_no_virtual=True)
    save_inference(session, session.new_model(seed=3), tmp_path / "manual")
    trained = make_checkpoint(tiny_causal_dir, tmp_path / "trained", CLASSIFY, verbalizer=VERBALIZER)
    app = create_app({"manual": tmp_path / "manual", "trained": trained})
    rows = [{"text": "my parcel is late"}, {"text": "thanks, all good"}]
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        alone = client.post("/v1/classify", json={"task": "manual", "rows": rows})
        assert alone.status_code == 200, alone.text
        answer = alone.json()["predictions"]
        assert [p["label"] for p in answer] == [p["prediction"] for p in app.state.tasks["manual"].predictor
                                                .predict(rows)]
        assert all(set(p["scores"]) == set(VERBALIZER) for p in answer)
    # rows of the manual prompt and of a trained task in one model call score as each task alone does
    from ptune.serving.batcher import predict_mixed

    tasks = app.state.tasks
    mixed = predict_mixed([(tasks["manual"], rows), (tasks["trained"], rows)])
    for name, got in zip(("manual", "trained"), mixed):
        for mine, alone in zip(got, tasks[name].predictor.predict(rows)):
            assert mine["prediction"] == alone["prediction"]
            assert mine["scores"] == pytest.approx(alone["scores"], abs=1e-4)
