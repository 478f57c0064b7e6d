"""Streamed generations share the model thread with ordinary batches (a slice per turn), give the text a whole answer
gives, and are capped (``Limits.max_streams``): one more is answered 429, and a client leaving gives its slot back."""

import functools
import json
import threading
import time

import pytest

from conftest import ROWS
from serve_helpers import standard_checkpoints

openai = pytest.importorskip("openai")
httpx = pytest.importorskip("httpx")

from ptune.serving.app import create_app  # noqa: E402
from ptune.serving.protocol import Limits  # noqa: E402
from ptune.serving.thread import ServerThread  # noqa: E402

TEXTS = [t for t, _ in ROWS]
MAX_STREAMS = 3
LONG = 200
"""A budget the tiny model spends in full (no end-of-sequence token before it)."""


@pytest.fixture(scope="module")
def server(tiny_causal_dir, tmp_path_factory):
    checkpoints = standard_checkpoints(tiny_causal_dir, tmp_path_factory.mktemp("streams"))
    app = create_app(checkpoints, limits=Limits(max_new_tokens=LONG, batch_wait_ms=5, max_streams=MAX_STREAMS))
    with ServerThread(app) as url:
        with httpx.Client(base_url=url, timeout=60) as native:
            client = openai.OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=60)
            yield app, client, native


@pytest.fixture
def slow_model(server, monkeypatch):
    """Every forward pass of the base model takes 10 ms more: a long stream lasts seconds."""
    app = server[0]
    base = app.state.tasks["reply"].store.base.model
    forward = base.forward

    @functools.wraps(forward)
    def slow(*args, **kwargs):
        time.sleep(0.01)
        return forward(*args, **kwargs)

    monkeypatch.setattr(base, "forward", slow)


def open_streams(app) -> int:
    """Streamed generations the server counts as open (0 on a server without the count)."""
    slots = getattr(app.state.batcher, "stream_slots", None)
    return slots.open if slots is not None else 0


def wait_until(condition, seconds: float = 20.0) -> bool:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def stream_body(text: str, max_tokens: int = LONG) -> dict:
    return {"model": "reply", "prompt": text, "max_tokens": max_tokens, "stream": True}


def read_stream(native, body: dict, first_chunk: threading.Event | None = None) -> tuple[str, str, float]:
    """The text of a streamed completion, its finish_reason, and when [DONE] arrived."""
    text, reason = [], None
    with native.stream("POST", "/v1/completions", json=body) as r:
        assert r.status_code == 200, r.read()
        for line in r.iter_lines():
            if not line.startswith("data: "):
                continue
            if line == "data: [DONE]":
                return "".join(text), reason, time.monotonic()
            choice = json.loads(line[len("data: "):])["choices"][0]
            text.append(choice["text"])
            reason = choice["finish_reason"] or reason
            if first_chunk is not None:
                first_chunk.set()
    raise AssertionError("the stream ended without [DONE]")


def test_a_classify_request_is_answered_while_a_long_stream_goes_on(server, slow_model):
    app, _, native = server
    first_chunk, out = threading.Event(), {}
    reader = threading.Thread(target=lambda: out.update(done=read_stream(native, stream_body(TEXTS[0]), first_chunk)))
    reader.start()
    assert first_chunk.wait(30)
    asked = time.monotonic()
    r = native.post("/v1/classify", json={"task": "complaints", "rows": [{"text": TEXTS[1]}]})
    answered = time.monotonic()
    reader.join(60)
    assert r.status_code == 200, r.text
    text, reason, ended = out["done"]
    assert reason == "length"  # the stream ran its whole budget of LONG tokens (2 s at least)
    assert answered < ended and answered - asked < (ended - asked) / 2


def test_streamed_text_equals_the_whole_answer_with_several_streams_at_once(server):
    app, client, native = server
    bodies = [stream_body(TEXTS[i], budget) for i, budget in ((0, 40), (2, 7), (3, 25))]
    assert len(bodies) == MAX_STREAMS
    results: list = [None] * len(bodies)
    readers = [threading.Thread(target=lambda i=i: results.__setitem__(i, read_stream(native, bodies[i])))
               for i in range(len(bodies))]
    for reader in readers:
        reader.start()
    for reader in readers:
        reader.join(60)
    for body, (text, reason, _) in zip(bodies, results):
        whole = client.completions.create(model="reply", prompt=body["prompt"], max_tokens=body["max_tokens"])
        assert text == whole.choices[0].text and reason == whole.choices[0].finish_reason
        native_text = native.post("/v1/generate", json={"task": "reply", "rows": [{"text": body["prompt"]}],
                                                         "max_new_tokens": body["max_tokens"]}).json()
        assert text == native_text["predictions"][0]["text"]
    chat = list(client.chat.completions.create(model="reply", messages=[{"role": "user", "content": TEXTS[4]}],
                                               max_tokens=12, stream=True))
    whole = client.chat.completions.create(model="reply", messages=[{"role": "user", "content": TEXTS[4]}],
                                           max_tokens=12)
    assert "".join(c.choices[0].delta.content or "" for c in chat if c.choices) == whole.choices[0].message.content


def test_one_stream_more_than_the_cap_is_refused_with_429(server, slow_model):
    app, client, native = server
    with native.stream("POST", "/v1/completions", json=stream_body(TEXTS[0])) as a, \
            native.stream("POST", "/v1/completions", json=stream_body(TEXTS[1])) as b, \
            native.stream("POST", "/v1/chat/completions", json={
                "model": "reply", "messages": [{"role": "user", "content": TEXTS[2]}], "max_tokens": LONG,
                "stream": True}) as c:
        assert [r.status_code for r in (a, b, c)] == [200] * MAX_STREAMS
        r = native.post("/v1/completions", json=stream_body(TEXTS[3]))
        assert r.status_code == 429, r.text
        assert int(r.headers["retry-after"]) >= 1
        error = r.json()["error"]
        assert set(error) == {"message", "type", "param", "code"} and str(MAX_STREAMS) in error["message"]
        with pytest.raises(openai.RateLimitError):
            client.chat.completions.create(model="reply", messages=[{"role": "user", "content": TEXTS[3]}],
                                           stream=True)
        # what is not a streamed generation is still answered
        assert client.completions.create(model="reply", prompt=TEXTS[3], max_tokens=3).choices[0].text is not None
        assert len(list(client.completions.create(model="complaints", prompt=TEXTS[3], stream=True))) == 1
    responses = app.openapi()["paths"]["/v1/completions"]["post"]["responses"]
    assert "429" in responses and "429" in app.openapi()["paths"]["/v1/chat/completions"]["post"]["responses"]


def test_a_client_leaving_mid_stream_gives_its_slot_back(server, slow_model):
    app, client, native = server
    assert wait_until(lambda: open_streams(app) == 0)
    before = app.state.batcher.stats.stream_tokens
    for _ in range(2):  # twice as many streams as the cap, each left after its first piece
        for i in range(MAX_STREAMS):
            with native.stream("POST", "/v1/completions", json=stream_body(TEXTS[i])) as r:
                assert r.status_code == 200
                assert next(r.iter_lines()).startswith("data: {")
        assert wait_until(lambda: open_streams(app) == 0)
    assert wait_until(lambda: not app.state.batcher.streams)
    # the streams stopped early: far fewer tokens than 2 x MAX_STREAMS x LONG were decoded
    assert app.state.batcher.stats.stream_tokens - before < MAX_STREAMS * LONG
    text, reason, _ = read_stream(native, stream_body(TEXTS[0], 5))
    assert reason in ("stop", "length") and text == client.completions.create(
        model="reply", prompt=TEXTS[0], max_tokens=5).choices[0].text


@pytest.mark.parametrize("batch", [False, True])
def test_open_streams_take_turns_or_advance_together(server, monkeypatch, batch):
    """By default each stream decodes alone, the streams taking turns; with ``stream_batch`` the streams over one
    base decode as one left-padded batch, a token for all of them costing one forward pass. Either way each one's
    text is the whole answer's here (float32: no near tie turned)."""
    from ptune.serving.batcher import predict_rows
    from ptune.serving.stream_jobs import StreamDecoder, StreamJob

    task = server[0].state.tasks["reply"]
    base = task.store.base.model
    calls = []
    forward = base.forward
    monkeypatch.setattr(base, "forward", functools.wraps(forward)(lambda *a, **k: calls.append(1) or forward(*a, **k)))
    budgets = [30, 9, 20]
    texts: list[list[str]] = [[] for _ in budgets]
    jobs = [StreamJob(task, {"text": TEXTS[i]}, budget, texts[i].append, threading.Event())
            for i, budget in enumerate(budgets)]
    decoder = StreamDecoder(batch=batch)
    for job in jobs:  # a turn starts one stream: its prompt and first token
        assert decoder.turn([job], 4) == []
    assert [g.jobs for g in decoder.groups] == ([jobs] if batch else [[job] for job in jobs])
    calls.clear()
    ended, turns = [], 0
    while len(ended) < len(jobs):
        ended += decoder.turn([], 4)
        turns += 1
    assert decoder.idle
    if batch:  # one call per step for all, not one per stream and step
        assert len(calls) == max(budgets) - 1
    else:  # a turn is one stream's slice of 4 tokens at most
        assert len(calls) == sum(budgets) - len(jobs) and turns == sum(-(-(b - 1) // 4) for b in budgets)
    for job, budget, pieces in zip(jobs, budgets, texts):
        assert job.result.text == "".join(pieces) == predict_rows(task, [job.row], budget)[0]["prediction"]
        assert job.result.new_tokens == budget and job.result.finish_reason == "length"
