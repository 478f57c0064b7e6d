"""The HTTP server: many P-tuned tasks over one frozen base model, with dynamic batching.

    GET  /health                      {"status": "ok", "tasks": n, "stats": {...}}
    GET  /v1/tasks                    {"tasks": [{"name", "type", "template", "fields", "labels"}]}
    POST /v1/classify                 {"task": NAME, "rows": [{FIELD: VALUE}, ...]}
                                      -> {"predictions": [{"label": L, "scores": {L: S}}]}   (row order)
    POST /v1/generate                 {"task": NAME, "rows": [...], "max_new_tokens": N}
                                      -> {"predictions": [{"text": T}]}
    GET  /v1/models, POST /v1/completions, POST /v1/chat/completions    OpenAI-compatible (see ``openai.py``)
    POST /v1/tasks, DELETE /v1/tasks/NAME                               with --tasks-dir (see ``live.py``)
    GET  /docs, /openapi.json, / (and /playground)                      offline Swagger UI, schema, a try-it page

The base model is loaded once; every checkpoint is a ``Predictor`` over it (a prompt table of a few kilobytes).

With API keys (``--api-key-file``), every endpoint but ``/health`` and the pages that hold no data (the playground,
the ``/docs`` shell) needs ``Authorization: Bearer KEY`` (``auth.py``). Every body must be sent as
``application/json``, and without keys only loopback ``Host`` names and the server's own ``Origin`` are served, so
that web pages of other sites cannot use it (``guard.py``).

Modules: ``protocol`` (limits, request checks, schemas), ``tasks`` (the served checkpoints), ``batcher`` (dynamic
batching on one model thread), ``state`` (what the routes share), ``app`` (create_app, the native routes),
``openai`` and ``openai_routes`` (the OpenAI-compatible requests, answers and routes), ``streaming`` (generation
token by token), ``stream_jobs`` (streams decoded a slice per turn between batches, and their cap), ``auth`` (API
keys), ``guard`` (what other sites' pages cannot do), ``live`` (adding and removing tasks), ``openapi`` (the
document, ``/docs``), ``playground``, ``server`` (the uvicorn config: connection limits and the header deadline),
``thread`` (a server on a background thread, for tests).
Nothing is imported here, so that ``ptune.serving.protocol`` stays light: import from the modules.
"""
