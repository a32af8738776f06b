"""The scripted server's replies as server-sent events, in the order the real APIs send them.

`messages_events` turns a Messages-API message into the stream a `stream: true` request gets
(message_start … message_stop); `responses_events` writes one answer as the Responses API's stream, which
Codex CLI reads. Imports nothing from the package, as the server it serves.
"""

from __future__ import annotations

import json
from typing import Any

CHUNK_CHARS = 16  # deltas are cut this small so a client's reassembly is exercised, as on the wire


def sse(event: str, data: dict[str, Any]) -> str:
    """One server-sent event: its name, its JSON data, a blank line."""
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def pieces(text: str) -> list[str]:
    """`text` cut into deltas; an empty text is one empty delta."""
    return [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)] or [""]


def messages_events(message: dict[str, Any]) -> str:
    """A whole Messages-API `message` as its event stream.

    As the API does, message_start carries the input side of the usage and a first output token, and
    message_delta the final, cumulative counts with the stop reason; a tool call's input arrives as
    input_json_delta pieces of its JSON text, starting with an empty one.
    """
    usage = message["usage"]
    start = {**message, "content": [], "stop_reason": None, "stop_sequence": None}
    start["usage"] = {**usage, "output_tokens": min(usage["output_tokens"], 1)}
    out = [sse("message_start", {"type": "message_start", "message": start})]
    for index, block in enumerate(message["content"]):
        opening: dict[str, Any]
        if block["type"] == "text":
            opening, deltas = (
                {"type": "text", "text": ""},
                [{"type": "text_delta", "text": p} for p in pieces(block["text"])],
            )
        else:
            opening = {**block, "input": {}}
            deltas = [{"type": "input_json_delta", "partial_json": ""}]
            deltas += [
                {"type": "input_json_delta", "partial_json": p} for p in pieces(json.dumps(block["input"]))
            ]
        out.append(
            sse(
                "content_block_start",
                {"type": "content_block_start", "index": index, "content_block": opening},
            )
        )
        if index == 0:
            out.append(sse("ping", {"type": "ping"}))
        out += [
            sse("content_block_delta", {"type": "content_block_delta", "index": index, "delta": d})
            for d in deltas
        ]
        out.append(sse("content_block_stop", {"type": "content_block_stop", "index": index}))
    delta = {"stop_reason": message["stop_reason"], "stop_sequence": message["stop_sequence"]}
    out.append(sse("message_delta", {"type": "message_delta", "delta": delta, "usage": usage}))
    out.append(sse("message_stop", {"type": "message_stop"}))
    return "".join(out)


def responses_events(
    response_id: str, model: str, output: list[dict[str, Any]], usage: dict[str, Any]
) -> str:
    """One Responses-API answer (the `output` items, done) as the stream Codex CLI reads.

    Each item is added, its text streamed as output_text deltas when it is a message, and done; then
    response.completed carries the whole response with its usage, as the API sends it.
    """
    response = {
        "id": response_id,
        "object": "response",
        "model": model,
        "status": "in_progress",
        "output": [],
    }
    out = [sse("response.created", {"type": "response.created", "response": response})]
    for index, item in enumerate(output):
        where = {"output_index": index, "item_id": item["id"]}
        opening = {**item, "status": "in_progress"}
        if item["type"] == "message":
            opening["content"] = []
        out.append(
            sse(
                "response.output_item.added", {"type": "response.output_item.added", **where, "item": opening}
            )
        )
        for part in item.get("content", []):
            out += [
                sse(
                    "response.output_text.delta",
                    {"type": "response.output_text.delta", **where, "content_index": 0, "delta": p},
                )
                for p in pieces(part["text"])
            ]
        out.append(
            sse("response.output_item.done", {"type": "response.output_item.done", **where, "item": item})
        )
    done = {**response, "status": "completed", "output": output, "usage": usage}
    out.append(sse("response.completed", {"type": "response.completed", "response": done}))
    return "".join(out)
