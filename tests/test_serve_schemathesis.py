"""Schemathesis against the running server: requests generated from its OpenAPI document (bodies that fit it,
bodies that break it one way or another, boundary values, wrong methods, missing keys) with every check on. The
document and the server agree: no failure, no 5xx, and most bodies that fit the document reach the model.

The tasks of the main run each take one field: a task with several fields takes, on the OpenAI endpoints, a JSON
object of them written as text, which the document says with ``contentSchema``; schemathesis does not generate from
it. Tasks with two fields get a run of their own on the native endpoints, whose rows the document describes field
by field. Tasks are not added or removed (no ``--tasks-dir``): the document cannot say which directories hold
checkpoints.
"""

from collections import Counter
from dataclasses import dataclass, field

import pytest

from serve_helpers import make_checkpoint

schemathesis = pytest.importorskip("schemathesis")
httpx = pytest.importorskip("httpx")

from ptune.serving.app import create_app  # noqa: E402
from ptune.serving.protocol import WHITESPACE, Limits  # noqa: E402
from ptune.serving.thread import ServerThread  # noqa: E402

KEY = "fuzz-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
LIMITS = Limits(max_rows=3, max_field_chars=40, max_new_tokens=4)
NATIVE_PATHS = ("/v1/classify", "/v1/generate")
MODEL_PATHS = (*NATIVE_PATHS, "/v1/completions", "/v1/chat/completions")
PAIR = "[P*2] {premise} ? {hypothesis} : [TARGET]"
# 413 is how this server refuses a body too large in some way: rows, characters, bytes. It is a refusal (schema-
# breaking bodies may get it), and bodies that fit the document may get it too: the document cannot bound the bytes
# of a body nor the joined length of a message's text parts.
CONFIG = {
    "checks": {"positive_data_acceptance": {"expected-statuses": ["2xx", "3xx", "401", "403", "404", "409", "413",
                                                                  "429", "5xx"]},
               "negative_data_rejection": {"expected-statuses": ["400", "401", "403", "404", "405", "406", "409",
                                                                 "413", "415", "422", "428", "429", "5xx"]}},
    "auth": {"openapi": {"bearer": {"bearer": KEY}}},
    "generation": {"database": "none", "max-examples": 10},
    "seed": 1,
    "workers": 1,
}


@dataclass
class Run:
    failures: list[str] = field(default_factory=list)
    """One line per failed check or error."""
    seen: Counter = field(default_factory=Counter)
    """(path, generation mode, status, whether the key was sent) -> requests."""


@pytest.fixture(scope="module")
def server(tiny_causal_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("schemathesis")
    checkpoints = {
        "complaints": make_checkpoint(tiny_causal_dir, root / "complaints", "[P*2] {text} Label : [TARGET]",
                                      verbalizer={"complaint": "complaint", "no complaint": "no complaint"}),
        "reply": make_checkpoint(tiny_causal_dir, root / "reply", "[P*2] {text} Label : [TARGET]",
                                 task_type="generation", max_new_tokens=3),
    }
    with ServerThread(create_app(checkpoints, limits=LIMITS, api_keys=[KEY])) as url:
        yield url


@pytest.fixture(scope="module")
def pair_server(tiny_causal_dir, tmp_path_factory):
    """Tasks with two fields, one per native endpoint."""
    root = tmp_path_factory.mktemp("schemathesis-pairs")
    checkpoints = {
        "entails": make_checkpoint(tiny_causal_dir, root / "entails", PAIR, verbalizer={"yes": "yes", "no": "no"}),
        "bridge": make_checkpoint(tiny_causal_dir, root / "bridge", "[P*2] {premise} | {hypothesis} => [TARGET]",
                                  task_type="generation", max_new_tokens=3),
    }
    with ServerThread(create_app(checkpoints, limits=LIMITS, api_keys=[KEY])) as url:
        yield url


def fuzz(url: str, paths: tuple[str, ...] | None = None) -> Run:
    """What ``schemathesis run URL/openapi.json --checks all`` does (every phase, every check; only ``paths`` if
    given), recorded."""
    from schemathesis.engine import Status, events, from_schema

    schema = schemathesis.openapi.from_url(f"{url}/openapi.json", config=schemathesis.Config.from_dict(CONFIG),
                                           headers=AUTH, timeout=60)
    if paths:
        schema = schema.include(path=list(paths))
    out = Run()

    @schema.hook("after_call")
    def count(context, case, response):
        mode = case.meta.generation.mode.value if case.meta is not None else "explicit"
        keyed = response.request.headers.get("Authorization") == AUTH["Authorization"]
        out.seen[(case.operation.path, mode, response.status_code, keyed)] += 1

    for event in from_schema(schema).execute():
        if isinstance(event, events.ScenarioFinished):
            recorder = event.recorder
            for checks in recorder.checks.values():
                out.failures += [f"{recorder.label}: {check.name}: {check.failure_info.failure.title} - "
                                 f"{check.failure_info.code_sample}" for check in checks
                                 if check.status == Status.FAILURE]
        elif isinstance(event, (events.NonFatalError, events.FatalError)):
            out.failures.append(f"{type(event).__name__}: {getattr(event, 'value', None) or event.exception!r}")
        elif isinstance(event, events.EngineFinished):
            out.failures += [f"after the run: {failure.title}" for failure in event.failures]
    return out


@pytest.fixture(scope="module")
def run(server) -> Run:
    return fuzz(server)


@pytest.fixture(scope="module")
def pair_run(pair_server) -> Run:
    return fuzz(pair_server, NATIVE_PATHS)


def reach_the_model(run: Run, path: str) -> Counter:
    """How the keyed requests with bodies that fit the document ended: answered, or each status."""
    outcome = Counter()
    for (seen_path, mode, status, keyed), n in run.seen.items():
        if seen_path == path and mode == "positive" and keyed:
            outcome["answered" if 200 <= status < 300 else status] += n
    return outcome


def test_no_check_fails(run):
    assert sum(run.seen.values()) > 100, run.seen
    assert not run.failures, "\n".join(run.failures)


def test_no_server_error(run):
    assert not [key for key in run.seen if key[2] >= 500], run.seen
    assert not [key for key in run.seen if key[2] == 401 and key[3]], run.seen  # the key is taken


def test_most_bodies_that_fit_the_document_reach_the_model(run):
    for path in MODEL_PATHS:
        outcome = reach_the_model(run, path)
        total = sum(outcome.values())
        assert total >= 5 and outcome["answered"] > total / 2, (path, outcome)


def test_two_field_rows_on_the_native_endpoints(pair_server, pair_run):
    assert not pair_run.failures, "\n".join(pair_run.failures)
    assert not [key for key in pair_run.seen if key[2] >= 500], pair_run.seen
    assert {key[0] for key in pair_run.seen} == set(NATIVE_PATHS)
    for path in NATIVE_PATHS:
        outcome = reach_the_model(pair_run, path)
        total = sum(outcome.values())
        assert total >= 5 and outcome["answered"] > total / 2, (path, outcome)
    row = {"premise": "the parcel is late", "hypothesis": "a complaint"}
    r = httpx.post(f"{pair_server}/v1/classify", json={"task": "entails", "rows": [row]}, headers=AUTH, timeout=60)
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] in ("yes", "no")
    r = httpx.post(f"{pair_server}/v1/classify", json={"task": "entails", "rows": [{"premise": "x"}]}, headers=AUTH,
                   timeout=60)
    assert r.status_code == 422 and "lacks field 'hypothesis'" in r.json()["error"]


def test_the_server_still_answers(server, run):
    assert httpx.get(f"{server}/health", timeout=30).json()["status"] == "ok"
    r = httpx.post(f"{server}/v1/classify", json={"task": "complaints", "rows": [{"text": "hi"}]}, headers=AUTH,
                   timeout=60)
    assert r.status_code == 200 and r.json()["predictions"][0]["label"] in ("complaint", "no complaint")


def test_the_blank_pattern_is_what_strip_removes():
    import re

    blank = re.compile(f"^[{WHITESPACE}]*$")
    for code in range(0x110000):
        char = chr(code)
        assert bool(blank.match(char)) == (not char.strip()), hex(code)



# what earlier runs found, each answered as the document says
FOUND = [
    ("/v1/generate", {"task": "reply", "rows": [{"text": "hi"}], "max_new_tokens": 2.0}, 200),  # 2.0 is an integer
    ("/v1/completions", {"model": "reply", "prompt": "hi", "max_tokens": 2.0, "seed": 1.0}, 200),
    ("/v1/chat/completions", {"model": "reply", "messages": [{"role": "user", "content": "hi"},
                                                             {"role": "assistant", "content": "a"}]}, 200),
    ("/v1/chat/completions", {"model": "reply", "messages": [{"role": "user", "content": " "},
                                                             {"role": "user", "content": "hi"}]}, 422),
    ("/v1/chat/completions", {"model": "reply", "messages": [{"role": "user"}, {"role": "user", "content": "hi"}]},
     400),
    ("/v1/chat/completions", {"model": "reply", "messages": [{"role": "user", "content": "hi"}],
                              "max_completion_tokens": 2, "max_tokens": 0}, 422),  # both budgets are checked
    ("/v1/completions", {"model": "reply", "prompt": "hi", "stream": False, "stream_options": {}}, 400),
    ("/v1/completions", {"model": "reply", "prompt": "hi", "logprobs": 1}, 400),  # no log-probabilities for text
    ("/v1/classify", {"task": "complaints", "rows": [{"text": "\u2003\x1c"}]}, 422),  # blank as str.strip says
]


@pytest.mark.parametrize("path, body, status", FOUND)
def test_found_mismatches_agree_now(server, path, body, status):
    jsonschema = pytest.importorskip("jsonschema")
    doc = httpx.get(f"{server}/openapi.json", headers=AUTH, timeout=60).json()
    schema = doc["paths"][path]["post"]["requestBody"]["content"]["application/json"]["schema"]
    r = httpx.post(server + path, json=body, headers=AUTH, timeout=60)
    assert r.status_code == status, r.text
    assert jsonschema.Draft202012Validator(schema).is_valid(body) == (status == 200)
