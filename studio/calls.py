"""What an API call must send: exactly as many values as its endpoint takes, in a small body, and no uploads.

``RequestLimits`` refuses uploads (the app has no upload input; gradio would take 64 MB or
300 files per request into its cache) and any request body over its endpoint's limit
(``CALL_BODY_BYTES``, else ``MAX_BODY_BYTES``), from the length it declares, before gradio
reads it (two 9.5 MB votes stalled every other request for 24 s; sixteen 1 MB votes, taken in,
made other visitors' /leaderboard take 3 s).

Gradio drops the values a call sends beyond what its endpoint takes (a vote sent with eight
arguments was stored as if it had five) and answers a call short of them with an error whose
message is empty. ``ArgumentCount``, an ASGI middleware in front of the app, refuses both for the
public endpoints, naming the arguments the endpoint takes, to callers gradio lets in (with ``--auth-file``, the
logged-in: gradio answers anyone else 401, and nothing names an argument to them). It reads the calls the way gradio
serves them: ``POST /gradio_api/call/<name>`` (``{"data": [...]}``) and the queue's
``POST /gradio_api/queue/join`` (``{"data": [...], "fn_index": i, ...}``, what gradio_client sends).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping

from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse

MAX_BODY_BYTES = 64 << 10  # the largest request body taken: a page's event, an API call or a log-in is a few kB
# Per named API call (``POST /gradio_api/call/<name>``), sized to what it takes: a vote is a few hundred bytes, with
# a comment of MAX_COMMENT_CHARS characters at most 12 kB as JSON escapes them.
CALL_BODY_BYTES = {"vote": 16 << 10, "played": 2 << 10, "next_task": 2 << 10, "undo": 2 << 10,
                   "leaderboard": 1 << 10, "export": 2 << 10, "push": 2 << 10, "generate": 8 << 10}
UPLOAD_PATH = re.compile(r"/gradio_api/upload/?$")
CALL_PATH = re.compile(r"/gradio_api/(?:call/(?P<name>[^/]+)/?|queue/join)$")


def endpoint_arguments(demo) -> tuple[dict[str, list[str]], dict[int, str]]:
    """(endpoint name -> its argument names, fn_index -> endpoint name) for the public endpoints of ``demo``."""
    named = demo.get_api_info()["named_endpoints"]
    arguments = {name.lstrip("/"): [p["parameter_name"] for p in endpoint["parameters"]]
                 for name, endpoint in named.items()}
    indices = {index: fn.api_name for index, fn in demo.fns.items() if fn.api_name in arguments}
    return arguments, indices


def logged_in(scope) -> bool:
    """Whether gradio takes this request's user as logged in: no log-in is required (no ``auth``), or it carries a
    log-in cookie gradio issued."""
    app = scope.get("app")  # gradio's FastAPI app: Starlette puts it in the scope
    if getattr(app, "auth", None) is None:
        return True
    cookies = Request(scope).cookies
    return any(cookies.get(f"{name}-{app.cookie_id}") in app.tokens for name in ("access-token", "access-token-unsecure"))


class ArgumentCount:
    """Answers 422 with a message to a call of a public endpoint whose ``data`` holds too many or too few values."""

    def __init__(self, app, arguments: Mapping[str, list[str]], indices: Mapping[int, str]):
        self.app, self.arguments, self.indices = app, arguments, indices

    async def __call__(self, scope, receive, send):
        call = CALL_PATH.search(scope["path"]) if scope["type"] == "http" and scope["method"] == "POST" else None
        if call is None or not logged_in(scope):  # gradio refuses a call without a log-in, saying nothing of it
            return await self.app(scope, receive, send)
        chunks, more = [], True
        while more:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunks.append(message.get("body", b""))
            more = message.get("more_body", False)
        body = b"".join(chunks)
        refusal = self.refusal(call["name"], body)
        if refusal is not None:  # in the form of gradio's own validation errors, which gradio_client raises
            detail = [{"__type__": "validate", "is_valid": False, "parameter_name": "data", "message": refusal}]
            return await JSONResponse({"detail": detail}, status_code=422)(scope, receive, send)
        replayed = False

        async def replay():
            nonlocal replayed
            if replayed:
                return await receive()
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}

        await self.app(scope, replay, send)

    def refusal(self, name: str | None, body: bytes) -> str | None:
        """Why a call with this body is refused, or None (malformed bodies are left to gradio)."""
        try:
            payload = json.loads(body)
        except ValueError:
            return None
        if not isinstance(payload, dict) or not isinstance(payload.get("data"), list):
            return None
        endpoint = name if name is not None else self.indices.get(payload.get("fn_index"))
        expected = self.arguments.get(endpoint)
        if expected is None or len(payload["data"]) == len(expected):
            return None
        return (f"/{endpoint} takes {len(expected)} argument(s) ({', '.join(expected) or 'none'}), "
                f"got {len(payload['data'])}")


class RequestLimits:
    """Answers 403 to ``POST /gradio_api/upload`` and 413 to a request whose body exceeds its limit: ``calls[name]``
    for a named API call, else ``max_body``."""

    def __init__(self, app, max_body: int = MAX_BODY_BYTES, calls: Mapping[str, int] = CALL_BODY_BYTES):
        self.app, self.max_body, self.calls = app, max_body, calls

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if UPLOAD_PATH.search(scope["path"]):
            return await PlainTextResponse("this app takes no uploads", status_code=403)(scope, receive, send)
        call = CALL_PATH.search(scope["path"])
        limit = self.calls.get(call["name"], self.max_body) if call and call["name"] else self.max_body
        declared = dict(scope.get("headers", [])).get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:  # refused before a byte of it is read
            return await self.too_large(scope, receive, send, limit)
        taken = 0

        async def counted():
            nonlocal taken
            message = await receive()
            taken += len(message.get("body", b""))
            if taken > limit:  # a body longer than it said (or chunked without a length)
                raise BodyTooLarge
            return message

        try:
            await self.app(scope, counted, send)
        except BodyTooLarge:
            await self.too_large(scope, receive, send, limit)

    @staticmethod
    async def too_large(scope, receive, send, limit: int):
        await PlainTextResponse(f"request bodies are limited to {limit} bytes here", status_code=413)(
            scope, receive, send)


class BodyTooLarge(Exception):
    """A request body went past ``RequestLimits.max_body`` while it was read."""
