"""Many tasks over one base model: a task keeps its prompt table (not a Predictor), tasks of one serving config share
a Session, models are kept for recently used tasks only, and every answer (one-task or mixed batches, over HTTP) is
the one each task's own Predictor gives."""

import gc
import json
import shutil
import tracemalloc

import pytest
import torch

from conftest import ROWS, tiny_config
from serve_helpers import classify_concurrently
from ptune.errors import CheckpointError
from ptune.inference import Predictor
from ptune.serving.batcher import predict_rows
from ptune.serving.tasks import TaskStore, load_tasks, parse_checkpoint_args

TEXTS = [t for t, _ in ROWS]
COMPLAINTS = {"template": "[P*3] Tweet text : {text} Label : [TARGET]",
              "verbalizer": {"complaint": "complaint", "no complaint": "no complaint"}}
SENTIMENT = {"template": "{text} [P*2] It was [TARGET]", "verbalizer": {"pos": "great", "neg": "terrible"}}
OTHERS = {  # tasks with serving configs of their own, mixed in with the many that share one
    "sentiment": SENTIMENT,
    "calibrated": {**COMPLAINTS, "calibrate": "content_free"},
    "mean": {**SENTIMENT, "score": "mean", "template": "[P*4] Review : {text} Verdict : [TARGET]"},
    "linear": {**COMPLAINTS, "head": "linear"},
    "linear-last": {**COMPLAINTS, "head": "linear", "head_pooling": "last"},  # served as its own pooling says
    "reply": {"type": "generation", "template": "[P*2] {text} Label : [TARGET]", "max_new_tokens": 4},
}
N_SHARED = 44


def write_tasks(model_dir, root, n_shared: int, others: dict) -> dict:
    """``n_shared`` checkpoints of one config (seeds 0..n-1), then one per entry of ``others``; untrained prompts
    (how a checkpoint is served does not depend on how well it was trained)."""
    from ptune.session import open_session
    from ptune.training.saving import save_inference

    specs = [(f"task-{i:03d}", COMPLAINTS, i) for i in range(n_shared)]
    specs += [(name, task, 100 + k) for k, (name, task) in enumerate(others.items())]
    sessions, base, folders = {}, None, {}
    for name, task, seed in specs:
        key = json.dumps(task, sort_keys=True)
        if key not in sessions:
            sessions[key] = open_session(tiny_config(model_dir, task={"type": "classification", **task},
                                                     train={"eval_batch_size": 8}), base=base)
            base = sessions[key].base
        session = sessions[key]
        save_inference(session, session.new_model(seed=seed), root / name)
        folders[name] = root / name
    return folders


@pytest.fixture(scope="module")
def folders(tiny_causal_dir, tmp_path_factory):
    return write_tasks(tiny_causal_dir, tmp_path_factory.mktemp("many"), N_SHARED, OTHERS)


def live_bytes() -> int:
    """Memory held by live objects: what tracemalloc traces (Python objects) plus every CPU tensor's storage
    (torch allocates those itself, out of tracemalloc's sight), each storage counted once."""
    gc.collect()
    storages = {}
    for obj in gc.get_objects():
        if issubclass(type(obj), torch.Tensor) and obj.device.type == "cpu":
            storage = obj.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return tracemalloc.get_traced_memory()[0] + sum(storages.values())


def bytes_per_task(names: list[str], load_and_use, first: int) -> float:
    """The memory each task adds, loaded and used once: (held after all of ``names`` - after the first ``first``) per
    task. Counting from ``first`` tasks leaves out what is built once (the base, sessions, kept models)."""
    tracemalloc.start()
    try:
        held = [load_and_use(name) for name in names[:first]]
        before = live_bytes()
        held += [load_and_use(name) for name in names[first:]]
        after = live_bytes()
    finally:
        tracemalloc.stop()
    assert len(held) == len(names)
    return (after - before) / (len(names) - first)


def test_tasks_of_one_config_share_a_session_and_keep_their_table_only(folders):
    store = TaskStore(max_models=4)
    tasks = load_tasks({name: folder for name, folder in folders.items()}, store=store)
    assert len(store.sessions) == 1 + len(OTHERS)  # the 44 seeds share one
    shared = [t for n, t in tasks.items() if n.startswith("task-")]
    assert all(t.session is shared[0].session for t in shared)
    assert all(not t.head for t in shared)  # no encoder weights kept: a linear head's weights only
    assert "classifier.linear.weight" in tasks["linear"].head and all(k.startswith("classifier.")
                                                                      for k in tasks["linear"].head)
    first = Predictor.load(folders["task-000"])
    assert torch.equal(tasks["task-000"].table, first.model.prompt_table())
    assert tasks["task-000"].describe() == {"name": "task-000", "type": "classification",
                                            "template": COMPLAINTS["template"], "fields": ["text"],
                                            "labels": ["complaint", "no complaint"], "max_new_tokens": None}
    assert len(store.models) <= 4  # models are built on use, not per task


def test_memory_per_task_is_its_table_and_not_a_predictor(folders, tiny_causal_dir):
    names = [n for n in folders if n.startswith("task-")]
    store = TaskStore(max_models=2)
    row = [{"text": TEXTS[0]}]

    def served(name):  # loaded and used once: a model is built, with its prefix cache, for the one-task batch
        task = store.load(name, folders[name])
        predict_rows(task, row, 4)
        return task

    per_task = bytes_per_task(names[:30], served, first=6)
    table = served(names[0]).table
    bound = table.numel() * table.element_size() + 4096  # the table and its record (name, folder, references)
    assert 0 < per_task <= bound, per_task
    assert len(store.models) <= 2

    base = store.base

    def predictor(name):  # the old way: a Predictor per task (encoder weights, session, model, prefix cache)
        p = Predictor.load(folders[name], base=base)
        p.predict_rows(row)
        return p

    assert bytes_per_task(names[:12], predictor, first=3) > 5 * bound  # the measure sees what a task holds


def test_kept_models_are_bounded_and_rebuilt_alike(folders):
    store = TaskStore(max_models=3)
    names = [n for n in folders if n.startswith("task-")][:8]
    tasks = {n: store.load(n, folders[n]) for n in names}
    rows = [{"text": t} for t in TEXTS]
    first = {n: predict_rows(t, rows, 4) for n, t in tasks.items()}
    assert len(store.models) == 3 and list(store.models) == [tasks[n] for n in names[-3:]]
    again = predict_rows(tasks[names[0]], rows, 4)  # its model was dropped: built again
    assert again == first[names[0]]
    assert list(store.models)[-1] is tasks[names[0]] and len(store.models) == 3
    own = Predictor.load(folders[names[0]]).predict_rows(rows)
    assert again == own  # the one-task path is the Predictor's, to the last digit


def test_mixed_rows_share_the_anchor_text_every_template_starts_with(tiny_causal_dir, tmp_path):
    from ptune.tasks.mixed import MixedGroup, MixedScorer, common_text_prefix

    suffix = {"template": "Tweet text : {text} [P*3] Label : [TARGET]", "verbalizer": COMPLAINTS["verbalizer"]}
    folders = write_tasks(tiny_causal_dir, tmp_path, 0, {"a": suffix, "b": suffix, "c": {**suffix, "score": "mean"}})
    store = TaskStore()
    tasks = {n: store.load(n, f) for n, f in folders.items()}
    rows = {"a": [{"text": t} for t in TEXTS], "b": [{"text": TEXTS[2]}], "c": [{"text": t} for t in TEXTS[:3]]}
    inputs = [tasks[n].session.task.renderer.encode(r) for n in rows for r in rows[n]]
    assert common_text_prefix(inputs) >= 3  # "Tweet text :" runs once for the rows of all three tasks
    groups = [MixedGroup(tasks[n].session.task, tasks[n].table, rows[n], lambda: None) for n in rows]
    with torch.inference_mode():
        mixed = MixedScorer(store.base.model).classify(groups, 4, "cpu")
    for name, got in zip(rows, mixed):
        want = Predictor.load(folders[name]).predict_rows(rows[name])
        assert [g["prediction"] for g in got] == [w["prediction"] for w in want]
        for g, w in zip(got, want):
            assert g["scores"] == pytest.approx(w["scores"], abs=2e-3)


def test_mixed_batches_of_other_tasks_reuse_the_anchor_text_keys_and_values(tiny_causal_dir, tmp_path, monkeypatch):
    import ptune.modeling.ptuning as ptuning
    from ptune.tasks.mixed import MixedGroup, MixedScorer

    suffix = {"template": "Tweet text : {text} [P*3] Label : [TARGET]", "verbalizer": COMPLAINTS["verbalizer"]}
    folders = write_tasks(tiny_causal_dir, tmp_path, 0, {n: suffix for n in "abcd"})
    store = TaskStore()
    tasks = {n: store.load(n, f) for n, f in folders.items()}
    runs, run_prefix = [], ptuning.run_prefix
    scorer = MixedScorer(store.base.model)
    # the second batch's rows open alike beyond the template's text: that longer prefix is not made either
    batches = [{"a": TEXTS[:2], "b": TEXTS[2:4]}, {"c": [TEXTS[1]], "d": [TEXTS[1], TEXTS[1]]}, {"b": TEXTS[4:]}]
    for batch in batches:
        groups = [MixedGroup(tasks[n].session.task, tasks[n].table, [{"text": t} for t in texts], lambda: None)
                  for n, texts in batch.items()]
        with torch.inference_mode(), monkeypatch.context() as m:  # the scorer's prefix runs only
            m.setattr(ptuning, "run_prefix", lambda *a, **k: runs.append(1) or run_prefix(*a, **k))
            mixed = scorer.classify(groups, 8, "cpu")
        for name, got in zip(batch, mixed):
            want = Predictor.load(folders[name]).predict_rows([{"text": t} for t in batch[name]])
            assert [g["prediction"] for g in got] == [w["prediction"] for w in want]
            for g, w in zip(got, want):
                assert g["scores"] == pytest.approx(w["scores"], abs=2e-3)
    assert len(runs) == 1  # "Tweet text :" ran once, for three batches of other tasks' tables


def test_a_broken_checkpoint_is_refused_as_predictor_refuses_it(folders, tmp_path):
    folder = shutil.copytree(folders["task-001"], tmp_path / "wrong")
    meta = json.loads((folder / "ptune.json").read_text())
    meta["config"]["encoder"]["hidden_size"] = 17  # the saved encoder weights no longer fit the config
    (folder / "ptune.json").write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="do not fit the manifest's config"):
        Predictor.load(folder)
    with pytest.raises(CheckpointError, match="do not fit the manifest's config"):
        TaskStore().load("wrong", folder)


def test_a_folder_of_checkpoints_names_each_by_its_subfolder(folders, tmp_path):
    root = folders["task-000"].parent
    found = parse_checkpoint_args([str(root)])
    assert list(found) == sorted(folders) and found["sentiment"] == str(folders["sentiment"])
    assert parse_checkpoint_args([str(folders["reply"])]) == {"reply": str(folders["reply"])}
    assert parse_checkpoint_args([f"x={folders['reply']}"]) == {"x": str(folders["reply"])}
    assert parse_checkpoint_args([str(tmp_path)]) == {tmp_path.name: str(tmp_path)}  # no checkpoints: as before


def test_server_answers_are_each_tasks_own_predictions(folders):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from ptune.serving.app import create_app
    from ptune.serving.protocol import Limits
    from ptune.serving.thread import ServerThread

    long_row = "the box was broken again " * 30  # cut to fit: scored by its task's own per-candidate path
    classify = [n for n in folders if n != "reply"]
    jobs = [(name, [TEXTS[k % len(TEXTS)]]) for k, name in enumerate(classify)]
    jobs += [("calibrated", TEXTS[:3]), ("task-007", [long_row, TEXTS[1]]), ("mean", [long_row])]
    app = create_app(parse_checkpoint_args([str(folders["task-000"].parent)]),
                     limits=Limits(max_rows=8, max_field_chars=2000, batch_wait_ms=150))
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        answers = classify_concurrently(client, jobs)
        reply = client.post("/v1/generate", json={"task": "reply", "rows": [{"text": TEXTS[0]}]}).json()
        stats = client.get("/health").json()["stats"]
    assert stats["mixed_batches"] >= 1 and stats["batches"] < len(jobs)  # rows of many tasks shared model calls
    for k, (name, texts) in enumerate(jobs):
        want = Predictor.load(folders[name]).predict_rows([{"text": t} for t in texts])
        got = answers[k]
        assert [g["label"] for g in got] == [w["prediction"] for w in want], name
        for g, w in zip(got, want):
            assert g["scores"] == pytest.approx(w["scores"], abs=2e-3), name
    own = Predictor.load(folders["reply"]).predict_rows([{"text": TEXTS[0]}])
    assert reply["predictions"][0]["text"] == own[0]["prediction"]


def test_task_requests_do_not_build_the_openapi_document(folders, monkeypatch):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    import ptune.serving.openapi as openapi
    from ptune.serving.app import create_app
    from ptune.serving.thread import ServerThread

    built = []
    real = openapi.request_bodies
    monkeypatch.setattr(openapi, "request_bodies", lambda state: built.append(1) or real(state))
    app = create_app({n: folders[n] for n in ("task-000", "task-001", "sentiment")})
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        for name in ("task-000", "task-001", "sentiment"):
            assert client.post("/v1/classify", json={"task": name, "rows": [{"text": TEXTS[0]}]}).status_code == 200
        assert client.get("/v1/tasks").status_code == 200 and not built
        assert client.get("/openapi.json").status_code == 200 and len(built) == 1


def test_one_row_of_a_task_without_a_kept_model_builds_none(folders):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from ptune.serving.app import create_app
    from ptune.serving.thread import ServerThread

    names = ("task-010", "task-011")
    app = create_app({n: folders[n] for n in names})
    store, task = app.state.serving.store, app.state.tasks["task-011"]
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        one = client.post("/v1/classify", json={"task": "task-011", "rows": [{"text": TEXTS[3]}]}).json()
        assert not store.keeps(task)  # scored by the shared scorer: no model built for one row
        two = client.post("/v1/classify", json={"task": "task-011", "rows": [{"text": TEXTS[3]}, {"text": TEXTS[4]}]})
        assert store.keeps(task)  # several rows: its model, whose prefix cache they share
    want = Predictor.load(folders["task-011"]).predict_rows([{"text": TEXTS[3]}, {"text": TEXTS[4]}])
    got = one["predictions"] + two.json()["predictions"][1:]
    assert [g["label"] for g in got] == [w["prediction"] for w in want]
    assert two.json()["predictions"][0]["scores"] == pytest.approx(one["predictions"][0]["scores"], abs=2e-3)


def test_an_unknown_task_lists_ten_names_and_how_many_more(folders):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from ptune.serving.app import create_app
    from ptune.serving.thread import ServerThread

    names = sorted(n for n in folders if n.startswith("task-"))
    app = create_app({n: folders[n] for n in names}, tasks_dir=folders[names[0]].parent)
    shown, hidden = names[:10], names[10:]
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=60) as client:
        native = [client.post("/v1/classify", json={"task": "nope", "rows": [{"text": "a"}]}),
                  client.delete("/v1/tasks/nope")]
        openai = client.post("/v1/completions", json={"model": "nope", "prompt": "a"})
    messages = [r.json()["error"] for r in native] + [openai.json()["error"]["message"]]
    assert [r.status_code for r in [*native, openai]] == [404] * 3
    for message, listing in zip(messages, ["GET /v1/tasks"] * 2 + ["GET /v1/models"]):
        assert f"{', '.join(shown)} and {len(hidden)} more ({listing} lists them all)" in message, message
        assert not any(n in message for n in hidden)
