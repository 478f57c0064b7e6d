"""The OpenAPI document declares exactly what the server takes (task names, required fields, limits): requests the
server accepts validate against it and requests it refuses for a reason a schema can say do not. Wrong methods
get a 405 naming the allowed ones."""

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from serve_helpers import make_checkpoint

httpx = pytest.importorskip("httpx")
jsonschema = pytest.importorskip("jsonschema")

from ptune.serving.app import create_app  # noqa: E402
from ptune.serving.openai import CHAT_KEYS, COMPLETION_KEYS  # noqa: E402
from ptune.serving.protocol import Limits  # noqa: E402
from ptune.serving.thread import ServerThread  # noqa: E402

LIMITS = Limits(max_rows=3, max_field_chars=40, max_new_tokens=6)


@pytest.fixture(scope="module")
def server(tiny_causal_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("openapi")
    make_checkpoint(tiny_causal_dir, root / "later", "[P*2] {text} Label : [TARGET]", task_type="generation")
    checkpoints = {
        "complaints": make_checkpoint(tiny_causal_dir, root / "complaints", "[P*2] {text} Label : [TARGET]",
                                      verbalizer={"complaint": "complaint", "no complaint": "no complaint"}),
        "pairs": make_checkpoint(tiny_causal_dir, root / "pairs", "{premise} [P*2] ? {hypothesis} [TARGET]",
                                 verbalizer={"yes": "yes", "no": "no"}),
        "reply": make_checkpoint(tiny_causal_dir, root / "reply", "[P*2] {text} Label : [TARGET]",
                                 task_type="generation"),
    }
    with ServerThread(create_app(checkpoints, limits=LIMITS, tasks_dir=root)) as url:
        with httpx.Client(base_url=url, timeout=60) as client:
            yield client


def body_schema(client, path):
    return client.get("/openapi.json").json()["paths"][path]["post"]["requestBody"]["content"][
        "application/json"]["schema"]


def valid(schema, body) -> bool:
    return jsonschema.Draft202012Validator(schema).is_valid(body)


def test_the_document_is_valid_openapi_with_task_names_and_limits(server):
    doc = server.get("/openapi.json").json()
    jsonschema.Draft202012Validator.check_schema(body_schema(server, "/v1/classify"))
    classify, generate = body_schema(server, "/v1/classify"), body_schema(server, "/v1/generate")
    assert classify["properties"]["task"]["enum"] == ["complaints", "pairs"]
    assert generate["properties"]["task"]["enum"] == ["reply"]
    assert classify["properties"]["rows"]["maxItems"] == 3
    assert generate["properties"]["max_new_tokens"]["maximum"] == 6
    pairs = next(v for v in classify["oneOf"] if v["title"] == "pairs")
    assert pairs["properties"]["rows"]["items"]["required"] == ["premise", "hypothesis"]
    assert pairs["properties"]["rows"]["items"]["properties"]["premise"]["oneOf"][0]["maxLength"] == 40
    assert body_schema(server, "/v1/completions")["properties"]["model"]["enum"] == ["complaints", "pairs", "reply"]
    assert set(body_schema(server, "/v1/completions")["properties"]) == COMPLETION_KEYS
    assert set(body_schema(server, "/v1/chat/completions")["properties"]) == CHAT_KEYS
    assert body_schema(server, "/v1/tasks")["required"] == ["name", "path"]
    assert "/docs" not in doc["paths"] and {"/health", "/v1/models", "/v1/tasks/{name}"} <= set(doc["paths"])


ACCEPTED = [
    ("/v1/classify", {"task": "complaints", "rows": [{"text": "hello"}]}),
    ("/v1/classify", {"task": "pairs", "rows": [{"premise": "a", "hypothesis": "b", "extra": "ignored"}]}),
    ("/v1/generate", {"task": "reply", "rows": [{"text": "hi"}] * 3, "max_new_tokens": 6}),
    ("/v1/completions", {"model": "complaints", "prompt": ["a", "b"], "temperature": 0, "n": 1, "seed": 3}),
    ("/v1/chat/completions", {"model": "reply", "messages": [{"role": "system", "content": "x"},
                                                            {"role": "user", "content": "hi"}], "max_tokens": 2}),
]
REFUSED = [
    ("/v1/classify", {"task": "reply", "rows": [{"text": "hello"}]}),  # a generation task
    ("/v1/classify", {"task": "nope", "rows": [{"text": "hello"}]}),
    ("/v1/classify", {"task": "pairs", "rows": [{"premise": "a"}]}),
    ("/v1/classify", {"task": "complaints", "rows": [{"text": "   "}]}),
    ("/v1/classify", {"task": "complaints", "rows": [{"text": "x" * 41}]}),
    ("/v1/classify", {"task": "complaints", "rows": [{"text": "a"}] * 4}),
    ("/v1/classify", {"task": "complaints", "rows": []}),
    ("/v1/classify", {"task": "complaints", "rows": [{"text": "a"}], "max_new_tokens": 2}),
    ("/v1/generate", {"task": "reply", "rows": [{"text": "a"}], "max_new_tokens": 7}),
    ("/v1/completions", {"model": "complaints", "prompt": "a", "temperature": 0.5}),
    ("/v1/completions", {"model": "complaints", "prompt": "a", "mirostat": 1}),
    ("/v1/completions", {"model": "complaints", "prompt": ["a"] * 4}),
    ("/v1/chat/completions", {"model": "reply", "messages": [], "max_tokens": 2}),
    ("/v1/chat/completions", {"model": "reply", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 7}),
]


@pytest.mark.parametrize("path, body", ACCEPTED)
def test_accepted_requests_fit_the_schema(server, path, body):
    assert valid(body_schema(server, path), body)
    assert server.post(path, json=body).status_code == 200


@pytest.mark.parametrize("path, body", REFUSED)
def test_refused_requests_do_not_fit_the_schema(server, path, body):
    assert not valid(body_schema(server, path), body)
    assert 400 <= server.post(path, json=body).status_code < 500


def test_added_and_removed_tasks_change_the_document(server):
    assert server.post("/v1/tasks", json={"name": "later", "path": "later"}).status_code == 201
    try:
        assert body_schema(server, "/v1/generate")["properties"]["task"]["enum"] == ["reply", "later"]
        assert "later" in body_schema(server, "/v1/chat/completions")["properties"]["model"]["enum"]
    finally:
        assert server.delete("/v1/tasks/later").status_code == 200
    assert body_schema(server, "/v1/generate")["properties"]["task"]["enum"] == ["reply"]


@pytest.mark.parametrize("method, path, allow", [
    ("GET", "/v1/classify", "POST"), ("PUT", "/v1/generate", "POST"), ("POST", "/health", "GET"),
    ("DELETE", "/v1/tasks", "GET, POST"), ("PATCH", "/v1/tasks/reply", "DELETE"),
    ("GET", "/v1/chat/completions", "POST"), ("POST", "/v1/models", "GET"),
])
def test_wrong_methods_get_405_with_allow(server, method, path, allow):
    r = server.request(method, path)
    assert r.status_code == 405, r.text
    assert r.headers["allow"] == allow and allow in r.json()["error"]


def test_keys_are_declared_when_set(tiny_causal_dir, tmp_path):
    checkpoint = make_checkpoint(tiny_causal_dir, tmp_path / "c", "[P*2] {text} Label : [TARGET]",
                                 verbalizer={"a": "yes", "b": "no"})
    with ServerThread(create_app({"c": checkpoint}, api_keys=["openapi-key"])) as url:
        doc = httpx.get(url + "/openapi.json", headers={"Authorization": "Bearer openapi-key"}, timeout=60).json()
    assert doc["components"]["securitySchemes"]["bearer"] == {"type": "http", "scheme": "bearer"}
    assert doc["security"] == [{"bearer": []}] and doc["paths"]["/health"]["get"]["security"] == []


# random bodies: the native endpoints answer 200 exactly when the body fits the document, and no body gets a 5xx.
# Each body is a valid one with at most one change, so that both sides of every limit are reached.
FIELDS = {"complaints": ["text"], "pairs": ["premise", "hypothesis"], "reply": ["text"]}
good = st.sampled_from(["hello", "the box was broken", "é", "x" * 40, "  padded  "])
values = st.one_of(good, st.integers(-10 ** 6, 10 ** 6), st.floats(-1e6, 1e6))
CHANGES = [None, "drop field", "blank", "whitespace", "too long", "41 chars", "dict value", "bool value",
           "too many rows", "no rows", "rows not a list", "other task", "unknown task", "extra key", "budget 7",
           "budget 0", "budget text", "budget 6", "not an object"]


@st.composite
def native_bodies(draw):
    path = draw(st.sampled_from(["/v1/classify", "/v1/generate"]))
    task = draw(st.sampled_from(["reply"] if path == "/v1/generate" else ["complaints", "pairs"]))
    rows = draw(st.lists(st.fixed_dictionaries({f: values for f in FIELDS[task]}), min_size=1, max_size=3))
    body = {"task": task, "rows": rows}
    change = draw(st.sampled_from(CHANGES))
    row, field = rows[0], FIELDS[task][-1]
    edits = {"drop field": lambda: row.pop(field), "blank": lambda: row.update({field: ""}),
             "whitespace": lambda: row.update({field: " \t\u2028"}), "too long": lambda: row.update({field: "y" * 41}),
             "41 chars": lambda: row.update({field: "é" * 41}), "dict value": lambda: row.update({field: {"a": 1}}),
             "bool value": lambda: row.update({field: True}), "too many rows": lambda: body.update(rows=[row] * 4),
             "no rows": lambda: body.update(rows=[]), "rows not a list": lambda: body.update(rows=row),
             "other task": lambda: body.update(task="complaints" if task == "reply" else "reply"),
             "unknown task": lambda: body.update(task="nope"), "extra key": lambda: body.update(extra=1),
             "budget 7": lambda: body.update(max_new_tokens=7), "budget 0": lambda: body.update(max_new_tokens=0),
             "budget text": lambda: body.update(max_new_tokens="5"), "budget 6": lambda: body.update(max_new_tokens=6)}
    if change == "not an object":
        return path, change, [body]
    if change is not None:
        edits[change]()
    return path, change, body


FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


@FUZZ
@given(case=native_bodies())
def test_native_endpoints_answer_exactly_what_the_document_allows(server, case):
    path, change, body = case
    status = server.post(path, json=body).status_code
    assert status < 500
    assert (status == 200) == valid(body_schema(server, path), body), (change, status, body)
    if change is None:
        assert status == 200


openai_bodies = st.fixed_dictionaries(
    {"model": st.sampled_from(["complaints", "pairs", "reply", "nope"])},
    optional={"prompt": st.one_of(values, st.lists(values, max_size=4)), "max_tokens": st.integers(-1, 8),
              "temperature": st.sampled_from([0, 0.0, 1, None, True]), "n": st.sampled_from([1, 2, None]),
              "stream": st.sampled_from([False, None, "yes", 0]),
              "logprobs": st.sampled_from([0, 2, 9, None, True, "x"]),
              "top_logprobs": st.sampled_from([0, 3, 21, None, "x"]), "seed": st.sampled_from([1, None, "1", 1.5]),
              "user": st.sampled_from(["u", None, 3]), "stream_options": st.sampled_from([
                  None, {"include_usage": True}, {"include_usage": "yes"}, {"other": 1}]),
              "stop": st.sampled_from([[], "", "\n", None]), "messages": st.one_of(values, st.lists(
                  st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "robot", 1])},
                                        optional={"content": st.one_of(values, st.none(), st.just([
                                            {"type": "image_url"}]), st.just([{"type": "text", "text": "hi"}]))}),
                  max_size=2))})


@FUZZ
@given(body=openai_bodies, path=st.sampled_from(["/v1/completions", "/v1/chat/completions"]))
def test_openai_endpoints_refuse_what_the_document_refuses(server, body, path):
    status = server.post(path, json=body).status_code
    assert status < 500
    if not valid(body_schema(server, path), body):
        assert status >= 400, body
