"""The OpenAI-compatible endpoints, spoken to by the official ``openai`` client over loopback."""

import json

import pytest

from conftest import ROWS
from serve_helpers import make_checkpoint, standard_checkpoints

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from ptune.serving.app import create_app  # noqa: E402
from ptune.serving.protocol import Limits  # noqa: E402
from ptune.serving.thread import ServerThread  # noqa: E402

TEXTS = [t for t, _ in ROWS]


@pytest.fixture(scope="module")
def server(tiny_causal_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("openai")
    checkpoints = standard_checkpoints(tiny_causal_dir, root)
    checkpoints["pairs"] = make_checkpoint(tiny_causal_dir, root / "pairs", "{premise} [P*2] ? {hypothesis} [TARGET]",
                                           verbalizer={"yes": "yes", "no": "no"})
    app = create_app(checkpoints, limits=Limits(max_rows=8, max_new_tokens=16, batch_wait_ms=5))
    with ServerThread(app) as url:
        with httpx.Client(base_url=url, timeout=60) as native:
            yield openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60), native


def native_generate(native, text, max_new_tokens):
    r = native.post("/v1/generate", json={"task": "reply", "rows": [{"text": text}], "max_new_tokens": max_new_tokens})
    assert r.status_code == 200, r.text
    return r.json()["predictions"][0]["text"]


def native_classify(native, task, rows):
    r = native.post("/v1/classify", json={"task": task, "rows": rows})
    assert r.status_code == 200, r.text
    return r.json()["predictions"]


def test_models_are_the_tasks(server):
    client, _ = server
    assert [m.id for m in client.models.list()] == ["complaints", "sentiment", "reply", "pairs"]
    assert client.models.retrieve("reply").owned_by == "ptune"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")


def test_completion_and_chat_of_a_generation_task_equal_the_native_answer(server):
    client, native = server
    for text in TEXTS[:3]:
        want = native_generate(native, text, 8)
        got = client.completions.create(model="reply", prompt=text, max_tokens=8)
        assert got.choices[0].text == want and got.model == "reply"
        assert got.choices[0].finish_reason in ("stop", "length") and got.usage.prompt_tokens > 0
        chat = client.chat.completions.create(model="reply", messages=[
            {"role": "system", "content": "ignored"}, {"role": "user", "content": text}], max_tokens=8)
        assert chat.choices[0].message.content == want and chat.choices[0].message.role == "assistant"
    several = client.completions.create(model="reply", prompt=TEXTS[:3], max_tokens=4, temperature=0)
    assert [c.index for c in several.choices] == [0, 1, 2]
    assert [c.text for c in several.choices] == [native_generate(native, t, 4) for t in TEXTS[:3]]


def test_streaming_generation_sends_the_same_text_in_pieces(server):
    client, native = server
    text = TEXTS[0]
    want = native_generate(native, text, 16)
    chunks = list(client.completions.create(model="reply", prompt=text, max_tokens=16, stream=True))
    pieces = [c.choices[0].text for c in chunks if c.choices]
    assert "".join(pieces) == want and sum(bool(p) for p in pieces) > 1  # several pieces, not one at the end
    assert chunks[-1].choices[0].finish_reason in ("stop", "length")
    chunks = list(client.chat.completions.create(model="reply", messages=[{"role": "user", "content": text}],
                                                 max_completion_tokens=16, stream=True,
                                                 stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == want
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens > 0
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] in ("stop", "length")


def test_classification_answers_the_label_with_every_label_score(server):
    client, native = server
    rows = [{"text": t} for t in TEXTS[:4]]
    want = native_classify(native, "complaints", rows)
    got = client.completions.create(model="complaints", prompt=TEXTS[:4])
    for choice, w in zip(got.choices, want):
        assert choice.text == w["label"] and choice.finish_reason == "stop"
        assert choice.logprobs.tokens == [w["label"]]
        assert choice.logprobs.top_logprobs[0] == pytest.approx(w["scores"])
        assert choice.logprobs.token_logprobs[0] == pytest.approx(w["scores"][w["label"]])
    chat = client.chat.completions.create(model="sentiment", messages=[
        {"role": "user", "content": [{"type": "text", "text": TEXTS[1]}]}])
    w = native_classify(native, "sentiment", [{"text": TEXTS[1]}])[0]
    assert chat.choices[0].message.content == w["label"]
    entry = chat.choices[0].logprobs.content[0]
    assert entry.token == w["label"]
    assert {t.token: t.logprob for t in entry.top_logprobs} == pytest.approx(w["scores"])
    assert [t.token for t in entry.top_logprobs] == sorted(w["scores"], key=w["scores"].get, reverse=True)


def test_classification_streams_one_chunk(server):
    client, native = server
    w = native_classify(native, "complaints", [{"text": TEXTS[2]}])[0]
    chunks = list(client.chat.completions.create(model="complaints", stream=True,
                                                 messages=[{"role": "user", "content": TEXTS[2]}]))
    assert len(chunks) == 1
    assert chunks[0].choices[0].delta.content == w["label"] and chunks[0].choices[0].finish_reason == "stop"
    assert {t.token for t in chunks[0].choices[0].logprobs.content[0].top_logprobs} == set(w["scores"])
    chunks = list(client.completions.create(model="complaints", prompt=TEXTS[2], stream=True))
    assert [c.choices[0].text for c in chunks] == [w["label"]]


def test_a_task_with_several_fields_takes_a_json_object(server):
    client, native = server
    row = {"premise": "the box was broken", "hypothesis": "the order arrived late"}
    want = native_classify(native, "pairs", [row])[0]["label"]
    assert client.completions.create(model="pairs", prompt=json.dumps(row)).choices[0].text == want
    chat = client.chat.completions.create(model="pairs", messages=[{"role": "user", "content": json.dumps(row)}])
    assert chat.choices[0].message.content == want
    with pytest.raises(openai.BadRequestError, match="several fields; send a JSON object of 'premise', 'hypothesis'"):
        client.completions.create(model="pairs", prompt="just text")


@pytest.mark.parametrize("kwargs, param", [
    ({"temperature": 0.7}, "temperature"),
    ({"top_p": 0.5}, "top_p"),
    ({"n": 2}, "n"),
    ({"stop": ["\n"]}, "stop"),
    ({"presence_penalty": 1.0}, "presence_penalty"),
    ({"logit_bias": {"5": 1}}, "logit_bias"),
    ({"logprobs": True}, "logprobs"),
    ({"tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]}, "tools"),
    ({"response_format": {"type": "json_object"}}, "response_format"),
    ({"extra_body": {"mirostat": 1}}, "mirostat"),
])
def test_unsupported_parameters_are_refused_not_ignored(server, kwargs, param):
    client, _ = server
    with pytest.raises(openai.BadRequestError) as err:
        client.chat.completions.create(model="reply", messages=[{"role": "user", "content": "hi"}], **kwargs)
    assert err.value.status_code == 400 and err.value.body["param"] == param


@pytest.mark.parametrize("path, body, status, param", [
    ("/v1/completions", {"model": "nope", "prompt": "a"}, 404, "model"),
    ("/v1/completions", {"prompt": "a"}, 400, "model"),
    ("/v1/completions", {"model": "reply", "prompt": [1, 2, 3]}, 400, "prompt[0]"),
    ("/v1/completions", {"model": "reply", "prompt": "a", "echo": True}, 400, "echo"),
    ("/v1/completions", {"model": "reply", "prompt": "a", "max_tokens": 10 ** 6}, 422, "max_tokens"),
    ("/v1/completions", {"model": "reply", "prompt": ["a", "b"], "stream": True}, 400, "prompt"),
    ("/v1/completions", {"model": "reply", "prompt": "a", "stream_options": {"include_usage": True}}, 400,
     "stream_options"),
    ("/v1/chat/completions", {"model": "reply", "messages": [{"role": "assistant", "content": "a"}]}, 400, "messages"),
    ("/v1/chat/completions", {"model": "reply", "messages": []}, 400, "messages"),
    ("/v1/chat/completions", {"model": "reply", "messages": [{"role": "user", "content": [
        {"type": "image_url", "image_url": {"url": "x"}}]}]}, 400, "messages"),
])
def test_errors_have_openai_shape(server, path, body, status, param):
    _, native = server
    r = native.post(path, json=body)
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["message"]
    assert error["param"] == param and error["type"] == "invalid_request_error"


def test_a_client_leaving_a_stream_leaves_the_server_serving(server):
    client, native = server
    with native.stream("POST", "/v1/completions", json={"model": "reply", "prompt": TEXTS[0], "max_tokens": 16,
                                                        "stream": True}) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        assert next(r.iter_lines()).startswith("data: {")
    assert native.get("/health").json()["status"] == "ok"
    assert client.completions.create(model="reply", prompt=TEXTS[1], max_tokens=4).choices[0].text == \
        native_generate(native, TEXTS[1], 4)
