"""scripts/soak.py: a short soak of `ptune serve` on the tiny model passes, and its checks catch what they are for
(a 500, a stream cut short, a task lost, memory growing, a stream slot never given back)."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import pytest

httpx = pytest.importorskip("httpx")
pytest.importorskip("psutil")

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))

import soak  # noqa: E402

PLAN = {"classification": ["cls-0"], "generation": ["gen-0"], "spare": ["cls/task-0001"]}
EVENT = b'data: {"choices": [{"text": "hi", "index": 0}]}\n\n'


def traffic_against(handler) -> tuple[soak.Traffic, soak.Recorder]:
    rec = soak.Recorder()
    rec.measuring = True
    client = httpx.Client(base_url="http://127.0.0.1:1", transport=httpx.MockTransport(handler))
    return soak.Traffic(client, rec, PLAN, "t", 0), rec


@pytest.mark.parametrize("status, failed", [(200, False), (503, False), (429, False), (500, True), (422, True),
                                            (404, True)])
def test_an_answer_is_a_success_a_documented_refusal_or_a_failure(status, failed, monkeypatch):
    monkeypatch.setattr(soak.time, "sleep", lambda s: None)
    traffic, rec = traffic_against(lambda request: httpx.Response(status, json={"error": "x"}))
    traffic.classify()
    assert rec.statuses["classify"] == {str(status): 1}
    assert bool(rec.failures) is failed
    assert len(rec.latencies["classify"]) == (status == 200)


@pytest.mark.parametrize("body, abandon, failure", [
    (EVENT * 3 + b"data: [DONE]\n\n", False, None),
    (EVENT * 3, False, "stream: stream ended without [DONE]"),
    (EVENT + b'data: {"error": {"message": "boom"}}\n\n' + b"data: [DONE]\n\n", False,
     "stream: error event in the stream"),
    (EVENT * 3, True, None),  # the client went away on purpose: no [DONE] is expected
])
def test_streams_must_end_with_done_unless_abandoned(body, abandon, failure):
    traffic, rec = traffic_against(lambda request: httpx.Response(200, content=body,
                                                                  headers={"content-type": "text/event-stream"}))
    traffic.stream(abandon=abandon)
    assert sum(rec.statuses["abandon" if abandon else "stream"].values()) == 1
    assert list(rec.failures) == ([failure] if failure else [])


def passing_summary() -> dict:
    return {"answers": {kind: {"200": 3} for kind in soak.KINDS}, "failures": {}, "server_log_errors": [],
            "server_exit": None, "hung_clients": 0, "settled": [],
            "tasks": {"expected": 2, "listed": 2, "tasks_lost": [], "tasks_duplicated": [], "tasks_unexpected": [],
                      "models_lost": [], "models_duplicated": [], "models_unexpected": []},
            "memory_mb": {"growth_after_warmup": 3.0}}


@pytest.mark.parametrize("change, reason", [
    (lambda s: s["failures"].update({"classify: status 500": 2}), "failed requests: classify: status 500 (2)"),
    (lambda s: s["tasks"].update(tasks_lost=["cls-1"]), "/v1/tasks: lost ['cls-1']"),
    (lambda s: s["tasks"].update(models_duplicated=["gen-0"]), "/v1/models: duplicated ['gen-0']"),
    (lambda s: s["memory_mb"].update(growth_after_warmup=80.0), "resident memory grew 80.0 MB"),
    (lambda s: s["memory_mb"].update(growth_after_warmup=float("nan")), "resident memory grew nan MB"),
    (lambda s: s["answers"].update(stream={"429": 40}), "no stream request succeeded"),
    (lambda s: s["settled"].append("after the traffic, stream: {'429': 20}"), "after the traffic, stream"),
    (lambda s: s.update(server_log_errors=["ERROR:    Exception in ASGI application"]), "logged 1 error lines"),
    (lambda s: s.update(server_exit=-9), "the server exited during the run"),
])
def test_verdict_names_each_problem(change, reason):
    assert soak.verdict(passing_summary(), 64) == []
    summary = copy.deepcopy(passing_summary())
    change(summary)
    problems = soak.verdict(summary, 64)
    assert len(problems) == 1 and reason in problems[0], problems


def test_short_soak_on_the_tiny_model(tiny_causal_dir, tmp_path):
    """15 s of mixed traffic through `python -m ptune serve`, with one stream at a time allowed so that streams are
    also refused (429) and counted as refusals, not failures."""
    out = tmp_path / "soak.json"
    proc = subprocess.run([sys.executable, str(SCRIPTS / "soak.py"), "--model", str(tiny_causal_dir),
                           "--seconds", "15", "--clients", "4", "--serve-arg=--max-streams=1",
                           "--work", str(tmp_path / "work"), "--json", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    summary = json.loads(out.read_text())
    assert summary["ok"] and summary["problems"] == [] and summary["failures"] == {}
    assert set(summary["answers"]) == set(soak.KINDS)
    assert summary["tasks"]["listed"] == summary["tasks"]["expected"] == 5
    assert 0 < summary["memory_mb"]["after_warmup"] <= summary["memory_mb"]["peak"]
    assert "verdict: OK" in proc.stderr
