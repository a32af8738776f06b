"""A scripted stand-in for Anthropic's Messages API on 127.0.0.1: no key, no network, same answers every run.

Point the real `anthropic` SDK at it (`base_url=server.url`, or `ANTHROPIC_BASE_URL` for a dry run), or a
coding CLI (Claude Code; Codex through `POST /v1/responses`, streamed as the Responses API does): each
`POST /v1/messages` gets the next
`ScriptedReply`, as one JSON message or, for `stream: true`, as the API's event stream (scripted_stream.py).
`POST /v1/messages/count_tokens` and `HEAD` answer without taking a reply. Every request is recorded with
its secret headers' values replaced by a fingerprint (`fingerprint`), so a test can see which secret
reached the wire, and where. As the real API does, a request whose custom tool's `input_schema` the API
would refuse gets a 400.
`python -m otto_farm.scripted_server --script replies.json [--port N] [--log FILE]` serves a JSON list of
replies, and with --log appends each request to FILE as a JSON line, secrets fingerprinted.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import threading
import time
from collections import deque
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Self
from urllib.parse import urlsplit

from otto_farm.scripted_stream import messages_events, responses_events

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
SECRET_HEADERS = frozenset({"x-api-key", "authorization"})
# The Messages API refuses these at the top of a custom tool's input_schema (its 400 says so).
TOP_LEVEL_REFUSED = ("oneOf", "allOf", "anyOf")


def fingerprint(secret: str) -> str:
    """What the server records in place of a secret header's value: enough to compare, nothing to reuse."""
    return "sha256:" + hashlib.sha256(secret.encode()).hexdigest()[:16]


def schema_problem(tools: Any) -> str | None:
    """Why the Messages API would refuse these tools' input schemas (as its 400 says it), or None."""
    for i, tool in enumerate(tools if isinstance(tools, list) else []):
        if not isinstance(tool, dict) or "input_schema" not in tool:
            continue  # a client tool (bash, text editor) names its type instead
        schema = tool["input_schema"]
        where = f"tools.{i}.custom.input_schema"
        if not isinstance(schema, dict) or schema.get("type") != "object":
            return f"{where}.type: Input should be 'object'"
        if any(k in schema for k in TOP_LEVEL_REFUSED):
            return f"{where}: input_schema does not support oneOf, allOf, or anyOf at the top level"
    return None


@dataclass(frozen=True)
class ScriptedReply:
    """One answer: a tool call and/or text (text first), an error `status`, or a verbatim `raw_body`."""

    tool_input: dict[str, Any] | None = None
    tool_name: str | None = None  #: default: the tool the request forces, else its first tool
    text: str | None = None  #: with a non-200 status: the error message
    status: int = 200
    delay_s: float = 0
    input_tokens: int = 10
    output_tokens: int = 10
    cache_read_tokens: int = 0
    cache_write_tokens: int = 0
    stop_reason: str | None = None
    raw_body: str | None = None
    retry_after_s: float | None = None  #: with an error status: the `retry-after` it sends (default: ~0)
    headers: dict[str, str] | None = None  #: sent as they are, e.g. the API's anthropic-ratelimit-*


@dataclass(frozen=True)
class RecordedRequest:
    """One request as received: its path, its JSON body (None when not JSON), its headers (lower-case
    names), each secret one's value replaced by its `fingerprint`, its method and when it came (epoch s)."""

    path: str
    body: Any
    headers: dict[str, str]
    method: str = "POST"
    at: float = 0.0


@dataclass(frozen=True)
class _Response:
    status: int
    body: str
    delay_s: float = 0
    retry: bool = True  #: False sends `x-should-retry: false`
    retry_after_s: float | None = None
    content_type: str = "application/json"
    extra: tuple[tuple[str, str], ...] = ()

    def headers(self) -> dict[str, str]:
        return {**self._retry_headers(), **dict(self.extra)}

    def _retry_headers(self) -> dict[str, str]:
        if not self.retry:
            return {"x-should-retry": "false"}
        if self.retry_after_s is not None:
            return {"retry-after": f"{self.retry_after_s:g}"}
        if self.status in (408, 409, 429) or self.status >= 500:
            # The SDK ignores `retry-after: 0` and backs off 0.5-8 s; a positive retry-after-ms is obeyed.
            return {"retry-after": "0", "retry-after-ms": "1"}
        return {}


SSE = "text/event-stream"


def _error(
    status: int, message: str, delay_s: float = 0, retry: bool = True, retry_after_s: float | None = None
) -> _Response:
    body = {"type": "error", "error": {"type": ERROR_TYPES.get(status, "api_error"), "message": message}}
    return _Response(status, json.dumps(body), delay_s, retry, retry_after_s)


def _render(reply: ScriptedReply, request: dict[str, Any], n: int) -> _Response:
    if reply.raw_body is not None:
        return _Response(reply.status, reply.raw_body, reply.delay_s)
    if reply.status != 200:
        message = reply.text or f"scripted error {reply.status}"
        return _error(reply.status, message, reply.delay_s, retry_after_s=reply.retry_after_s)
    extra = tuple((reply.headers or {}).items())
    content: list[dict[str, Any]] = []
    if reply.text is not None:
        content.append({"type": "text", "text": reply.text})
    if reply.tool_input is not None:
        choice, tools = request.get("tool_choice") or {}, request.get("tools") or []
        forced = choice.get("name") if choice.get("type") == "tool" else None
        name = reply.tool_name or forced or (tools[0].get("name") if tools else None)
        if name is None:
            return _error(400, "scripted tool_input, but the request names no tool")
        content.append({"type": "tool_use", "id": f"toolu_{n}", "name": name, "input": reply.tool_input})
    answer = {
        "id": f"msg_{n}",
        "type": "message",
        "role": "assistant",
        "model": request.get("model", ""),
        "content": content,
        "stop_reason": reply.stop_reason or ("tool_use" if reply.tool_input is not None else "end_turn"),
        "stop_sequence": None,
        "usage": {
            "input_tokens": reply.input_tokens,
            "output_tokens": reply.output_tokens,
            "cache_creation_input_tokens": reply.cache_write_tokens,
            "cache_read_input_tokens": reply.cache_read_tokens,
        },
    }
    if request.get("stream") is True:
        return _Response(200, messages_events(answer), reply.delay_s, content_type=SSE, extra=extra)
    return _Response(200, json.dumps(answer), reply.delay_s, extra=extra)


def _render_responses(reply: ScriptedReply, request: dict[str, Any], n: int) -> _Response:
    """The reply as the Responses API streams it (Codex CLI): text as a message, a tool call as a
    `function_call` of its JSON input, or a `custom_tool_call` when its input is just {"input": text}."""
    if reply.raw_body is not None or reply.status != 200:
        return _render(reply, request, n)
    output: list[dict[str, Any]] = []
    if reply.text is not None:
        content = [{"type": "output_text", "text": reply.text, "annotations": []}]
        output.append({"type": "message", "id": f"msg_{n}", "role": "assistant", "content": content})
    if reply.tool_input is not None:
        if reply.tool_name is None:
            return _error(400, "scripted tool_input for the Responses API needs a tool_name")
        call = {"id": f"fc_{n}", "call_id": f"call_{n}", "name": reply.tool_name}
        raw = reply.tool_input.get("input")
        if set(reply.tool_input) == {"input"} and isinstance(raw, str):
            output.append({"type": "custom_tool_call", **call, "input": raw})
        else:
            output.append({"type": "function_call", **call, "arguments": json.dumps(reply.tool_input)})
    output = [{**item, "status": "completed"} for item in output]
    cached, written = reply.cache_read_tokens, reply.cache_write_tokens
    read = reply.input_tokens + cached + written  # the Responses API counts cached input inside input_tokens
    usage = {
        "input_tokens": read,
        "input_tokens_details": {"cached_tokens": cached, "cache_write_tokens": written},
        "output_tokens": reply.output_tokens,
        "output_tokens_details": {"reasoning_tokens": 0},
        "total_tokens": read + reply.output_tokens,
    }
    events = responses_events(f"resp_{n}", str(request.get("model", "")), output, usage)
    return _Response(200, events, reply.delay_s, content_type=SSE)


def count_tokens(request: dict[str, Any]) -> int:
    """A stand-in for `count_tokens`: about one token per four characters of what the model would read."""
    read = {k: request.get(k) for k in ("system", "messages", "tools")}
    return max(len(json.dumps(read)) // 4, 1)


def load_replies(path: str | Path) -> list[ScriptedReply]:
    """The replies in a JSON file holding a list of reply objects (`ScriptedReply` fields)."""
    items = json.loads(Path(path).read_text())
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise ValueError(f"{path}: expected a JSON list of reply objects")
    return [ScriptedReply(**item) for item in items]


class ScriptedServer:
    """A real HTTP server answering `POST /v1/messages` from a queue of `ScriptedReply`."""

    def __init__(self, replies: Iterable[ScriptedReply] = (), log: Path | None = None) -> None:
        self._lock = threading.Lock()
        self._log = log  #: each request appended as a JSON line
        self._replies = deque(replies)
        self._requests: list[RecordedRequest] = []
        self._count = 0
        self._stopping = threading.Event()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_file(cls, path: str | Path, log: Path | None = None) -> ScriptedServer:
        """A server scripted by a JSON file holding a list of reply objects (`ScriptedReply` fields)."""
        return cls(load_replies(path), log)

    def start(self, port: int = 0) -> str:
        """Serve on 127.0.0.1 (`port` 0 picks a free one) from a daemon thread; return the base URL."""
        if self._httpd is not None:
            raise RuntimeError("scripted server already started")
        self._stopping.clear()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), partial(_Handler, self))
        self._thread = threading.Thread(target=partial(self._httpd.serve_forever, 0.05), daemon=True)
        self._thread.start()
        return self.url

    def stop(self) -> None:
        """Stop serving and close the socket; replies still sleeping out their delay are dropped."""
        if self._httpd is None or self._thread is None:
            return
        self._stopping.set()
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()
        self._httpd = self._thread = None

    def __enter__(self) -> Self:
        if self._httpd is None:
            self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        """The base URL, `http://127.0.0.1:PORT`."""
        if self._httpd is None:
            raise RuntimeError("scripted server not started")
        return f"http://127.0.0.1:{self._httpd.server_port}"

    def script(self, *replies: ScriptedReply) -> None:
        """Replace the queue of replies."""
        with self._lock:
            self._replies = deque(replies)

    def add(self, *replies: ScriptedReply) -> None:
        """Append replies to the queue."""
        with self._lock:
            self._replies.extend(replies)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of every request received so far, oldest first."""
        with self._lock:
            return list(self._requests)

    def clear(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    def _answer(self, method: str, path: str, body: Any, headers: dict[str, str]) -> _Response:
        with self._lock:
            recorded = RecordedRequest(path, body, headers, method, time.time())
            self._requests.append(recorded)
            if self._log is not None:
                with self._log.open("a") as log:
                    log.write(json.dumps(asdict(recorded)) + "\n")
            self._count += 1
            route = urlsplit(path).path
            if method == "HEAD":
                return _Response(200, "")  # a client's check that the base URL answers
            if method == "POST" and route == "/v1/messages/count_tokens" and isinstance(body, dict):
                return _Response(200, json.dumps({"input_tokens": count_tokens(body)}))
            if method != "POST" or route not in ("/v1/messages", "/v1/responses"):
                return _error(404, f"scripted server has no route {method} {path}")
            if not isinstance(body, dict):
                return _error(400, "request body is not a JSON object")
            if (problem := schema_problem(body.get("tools"))) is not None:
                return _error(400, problem)
            if not self._replies:
                # No retry: the test that forgot a reply should see this once, at once.
                return _error(500, f"scripted server: script exhausted at request {self._count}", retry=False)
            reply, n = self._replies.popleft(), self._count
        return _render(reply, body, n) if route == "/v1/messages" else _render_responses(reply, body, n)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.0"  # one request per connection, so stop() never waits on an idle keep-alive

    def __init__(self, owner: ScriptedServer, *args: Any) -> None:
        self.owner = owner  # before super().__init__, which handles the request
        super().__init__(*args)

    def do_POST(self) -> None:
        self._serve()

    def do_GET(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def _serve(self) -> None:
        raw = self.rfile.read(int(self.headers.get("content-length") or 0))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {
            k.lower(): fingerprint(v) if k.lower() in SECRET_HEADERS else v for k, v in self.headers.items()
        }
        response = self.owner._answer(self.command, self.path, body, headers)
        if response.delay_s and self.owner._stopping.wait(response.delay_s):
            return
        data = response.body.encode()
        try:
            self.send_response(response.status)
            self.send_header("content-type", response.content_type)
            self.send_header("content-length", str(len(data)))
            for name, value in response.headers().items():
                self.send_header(name, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(data)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up first (its timeout): nothing to tell it

    def log_message(self, format: str, *args: Any) -> None:
        pass  # quiet: the recorded requests are the log


def main(argv: list[str] | None = None) -> None:
    """Serve a script file until interrupted; print the base URL for `ANTHROPIC_BASE_URL`."""
    parser = argparse.ArgumentParser(prog="python -m otto_farm.scripted_server", description=__doc__)
    parser.add_argument("--script", required=True, type=Path, help="JSON file: a list of reply objects")
    parser.add_argument("--port", type=int, default=0, help="port on 127.0.0.1 (default: a free one)")
    parser.add_argument("--log", type=Path, help="append each request to this file as a JSON line")
    args = parser.parse_args(argv)
    try:
        if args.log is not None:
            args.log.open("a").close()  # a log that cannot be written is refused now, not at a request
        server = ScriptedServer.from_file(args.script, args.log)
    except (OSError, ValueError, TypeError) as exc:
        parser.error(str(exc))
    print(server.start(args.port), flush=True)
    try:
        threading.Event().wait()
    except KeyboardInterrupt:
        pass
    finally:
        server.stop()


if __name__ == "__main__":
    main()
