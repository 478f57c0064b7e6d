"""A deep-prompt task served beside input-prompt tasks over one base: every answer, over HTTP, is the one the task's
own Predictor gives, though the deep task's rows cannot share the other tasks' mixed model calls."""

import pytest

from conftest import ROWS
from serve_helpers import classify_concurrently, make_checkpoint

TEXTS = [t for t, _ in ROWS]
COMPLAINTS = {"complaint": "complaint", "no complaint": "no complaint"}
DEEP = {"type": "mlp", "hidden_size": 16, "deep_tokens": 3}


@pytest.fixture(scope="module")
def folders(tiny_causal_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("deep-serve")
    return {
        "deep": make_checkpoint(tiny_causal_dir, root / "deep", "Tweet text : {text} Label : [TARGET]",
                                verbalizer=COMPLAINTS, encoder=DEEP),
        "deep-reply": make_checkpoint(tiny_causal_dir, root / "deep-reply", "{text} Label : [TARGET]",
                                      task_type="generation", encoder=DEEP, seed=4),
        "complaints": make_checkpoint(tiny_causal_dir, root / "complaints", "[P*3] Tweet text : {text} Label : "
                                      "[TARGET]", verbalizer=COMPLAINTS),
        "sentiment": make_checkpoint(tiny_causal_dir, root / "sentiment", "{text} [P*2] It was [TARGET]",
                                     verbalizer={"pos": "great", "neg": "terrible"}, seed=5),
    }


def test_deep_and_input_prompt_tasks_each_answer_as_their_own_predictor(folders):
    httpx = pytest.importorskip("httpx")
    pytest.importorskip("fastapi")
    from ptune.inference import Predictor
    from ptune.serving.app import create_app
    from ptune.serving.protocol import Limits
    from ptune.serving.tasks import parse_checkpoint_args
    from ptune.serving.thread import ServerThread

    assert Predictor.load(folders["deep"]).session.supports.mixing is False  # its rows are grouped on their own
    jobs = [(name, TEXTS[k % len(TEXTS):k % len(TEXTS) + 2]) for k, name in
            enumerate(["deep", "complaints", "sentiment", "deep", "complaints", "deep", "sentiment"])]
    app = create_app(parse_checkpoint_args([str(folders["deep"].parent)]),
                     limits=Limits(max_rows=8, max_field_chars=2000, batch_wait_ms=150))
    with ServerThread(app) as url, httpx.Client(base_url=url, timeout=120) as client:
        answers = classify_concurrently(client, jobs)
        reply = client.post("/v1/generate", json={"task": "deep-reply", "rows": [{"text": TEXTS[0]}]}).json()
    for k, (name, texts) in enumerate(jobs):
        want = Predictor.load(folders[name]).predict_rows([{"text": t} for t in texts])
        got = answers[k]
        assert [g["label"] for g in got] == [w["prediction"] for w in want], name
        for g, w in zip(got, want):
            assert g["scores"] == pytest.approx(w["scores"], abs=1e-3), name
    own = Predictor.load(folders["deep-reply"]).predict_rows([{"text": TEXTS[0]}])
    assert reply["predictions"][0]["text"] == own[0]["prediction"]
