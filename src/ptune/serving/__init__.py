"""The HTTP server: many P-tuned tasks over one frozen base model, with dynamic batching.

    GET  /health                      {"status": "ok", "tasks": n, "stats": {...}}
    GET  /v1/tasks                    {"tasks": [{"name", "type", "template", "fields", "labels"}]}
    POST /v1/classify                 {"task": NAME, "rows": [{FIELD: VALUE}, ...]}
                                      -> {"predictions": [{"label": L, "scores": {L: S}}]}   (row order)
    POST /v1/generate                 {"task": NAME, "rows": [...], "max_new_tokens": N}
                                      -> {"predictions": [{"text": T}]}
    GET  /v1/models, POST /v1/completions, POST /v1/chat/completions    OpenAI-compatible (see ``openai.py``)

The base model is loaded once; every checkpoint is a ``Predictor`` over it (a prompt table of a few kilobytes).

Modules: ``protocol`` (limits, request checks, schemas), ``tasks`` (the served checkpoints), ``batcher`` (dynamic
batching on one model thread), ``state`` (what the routes share), ``app`` (the native routes), ``openai`` and
``openai_routes`` (the OpenAI-compatible requests, answers and routes), ``streaming`` (generation token by token),
``thread`` (a server on a background thread, for tests).
Nothing is imported here, so that ``ptune.serving.protocol`` stays light: import from the modules.
"""
