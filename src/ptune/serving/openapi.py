"""The OpenAPI document and the offline ``/docs`` page.

The request bodies are checked by hand (``protocol``, ``openai``, ``live``: messages that name the row and field),
so the document declares them rather than FastAPI deriving them; it is written once per version of the task set
(``ServingState.tasks_version``), so that added and removed tasks appear in the task-name enums and a request for
it does not rebuild a schema of a thousand tasks. ``/docs`` is the Swagger UI with its script, stylesheet and icon
served by this server (the files fastapi-offline ships), so it works without internet access. With API keys set,
the page and its files load without a key (they hold no data) and the page asks for the key that reads the document.
"""

from __future__ import annotations

import copy
from pathlib import Path

import fastapi_offline
from fastapi import FastAPI
from fastapi.responses import HTMLResponse
from fastapi.staticfiles import StaticFiles

from .auth import OPEN_PATHS
from .live import add_request_schema
from .openai import ERROR_SCHEMA, request_schema
from .protocol import native_request_schema
from .state import ServingState

DOCS_ASSETS = "/docs-assets"
"""Where the Swagger UI's files are served."""
SWAGGER_FILES = Path(fastapi_offline.__file__).parent / "static"
EVENT = {"type": "object", "required": ["data"], "description": "one server-sent event (OpenAPI 3.2's event model)",
         "properties": {"data": {"type": "string", "description": "a chunk object as JSON; the last event's: [DONE]"},
                        "event": {"const": "message"}}}
UNSUPPORTED = "the body is not sent as Content-Type: application/json"
UNAUTHORIZED = {"description": "no valid API key (send Authorization: Bearer KEY)",
                "content": {"application/json": {"schema": ERROR_SCHEMA}}}


def request_bodies(state: ServingState) -> dict[tuple[str, str], dict]:
    """(path, method) -> the JSON schema of its body, for the tasks served now."""
    tasks, limits = state.tasks, state.limits
    return {("/v1/classify", "post"): native_request_schema(tasks, limits, "classify"),
            ("/v1/generate", "post"): native_request_schema(tasks, limits, "generate"),
            ("/v1/completions", "post"): request_schema("completion", tasks, limits),
            ("/v1/chat/completions", "post"): request_schema("chat", tasks, limits),
            ("/v1/tasks", "post"): add_request_schema()}


class ServingAPI(FastAPI):
    """A FastAPI app whose OpenAPI document declares the hand-checked request bodies for the tasks served now.

    Args:
        serving (ServingState): the tasks and limits.
        keyed (bool): whether API keys are required (the document then declares bearer authentication).
        **kwargs: FastAPI's own arguments.

    Example:
        >>> app = ServingAPI(state, keyed=False, title="ptune")  # doctest: +SKIP
    """

    def __init__(self, serving: ServingState, keyed: bool, **kwargs):
        super().__init__(**kwargs)
        self.serving = serving
        self.keyed = keyed
        self.document: tuple[int, dict] | None = None  # (the tasks_version it was built for, the document)

    def openapi(self) -> dict:
        """The document for the tasks served now: the cached one, unless a task was added or removed since."""
        version = self.serving.tasks_version
        if self.document is None or self.document[0] != version:
            self.document = (version, self.build_openapi())
        return self.document[1]

    def build_openapi(self) -> dict:
        """The document written anew: FastAPI's routes with the request bodies for the tasks served now."""
        schema = copy.deepcopy(super().openapi())  # the routes' part is cached by FastAPI; the tasks change
        for (path, method), body in request_bodies(self.serving).items():
            operation = schema["paths"][path][method]
            operation["requestBody"] = {"required": True, "content": {"application/json": {"schema": body}}}
            # 415 in the route's own error shape (its 400's): every body is read by state.read_json
            operation["responses"]["415"] = {**operation["responses"]["400"], "description": UNSUPPORTED}
        for path in ("/v1/completions", "/v1/chat/completions"):  # stream: true answers with server-sent events
            schema["paths"][path]["post"]["responses"]["200"]["content"]["text/event-stream"] = {"schema": EVENT}
        if self.keyed:
            schema.setdefault("components", {})["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
            schema["security"] = [{"bearer": []}]
            schema["paths"]["/health"]["get"]["security"] = []
            for path, operations in schema["paths"].items():
                for operation in operations.values():
                    if path not in OPEN_PATHS:
                        operation["responses"]["401"] = UNAUTHORIZED
        return schema


DOCS_PAGE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>TITLE - Swagger UI</title>
<link rel="stylesheet" href="ASSETS/swagger-ui.css"><link rel="icon" href="ASSETS/favicon.png">
<style>#key-bar { font: 14px sans-serif; max-width: 1460px; margin: 1rem auto 0; padding: 0 20px; }
#key-bar input { width: 20rem; } #key-bar[hidden] { display: none; }</style>
</head><body>
<form id="key-bar" HIDDEN>This server needs an API key to show its document:
<label>API key <input id="key" type="password" autocomplete="off"></label> <button type="submit">Use this key</button>
(kept in this tab, as the playground keeps it; Try it out sends it too)</form>
<div id="swagger-ui"></div>
<script src="ASSETS/swagger-ui-bundle.js"></script>
<script>
"use strict";
const key = () => sessionStorage.getItem("ptune-key") || "";
document.getElementById("key").value = key();
document.getElementById("key-bar").addEventListener("submit", (event) => {
  event.preventDefault();
  sessionStorage.setItem("ptune-key", document.getElementById("key").value.trim());
  location.reload();
});
const ui = SwaggerUIBundle({
  url: 'OPENAPI',
  dom_id: "#swagger-ui", layout: "BaseLayout", deepLinking: true, persistAuthorization: true,
  presets: [SwaggerUIBundle.presets.apis, SwaggerUIBundle.SwaggerUIStandalonePreset],
  // the key typed above reads the document; Try it out sends the Authorize dialog's key, else that one
  requestInterceptor: (request) => {
    if (key() && !request.headers.Authorization) request.headers.Authorization = "Bearer " + key();
    return request;
  },
  onComplete: () => { if (key()) ui.preauthorizeApiKey("bearer", key()); },
});
</script>
</body></html>
"""
"""The Swagger UI page: its files from this server; with keys, a key field (the one the playground uses)."""


def add_offline_docs(app: FastAPI, keyed: bool = False, openapi_url: str = "/openapi.json") -> None:
    """``/docs`` and its assets, all served by ``app``; with ``keyed``, the page asks for the key that reads the
    document."""
    app.mount(DOCS_ASSETS, StaticFiles(directory=SWAGGER_FILES), name="docs-assets")
    page = (DOCS_PAGE.replace("TITLE", app.title).replace("ASSETS", DOCS_ASSETS).replace("OPENAPI", openapi_url)
            .replace(" HIDDEN", "" if keyed else " hidden"))

    @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
    async def docs():
        return HTMLResponse(page)
