"""Check responses against the app's own ``/openapi.json``: a documented status, and a
body that fits the documented schema (each event of an event stream too)."""

from __future__ import annotations

import json
import re
from typing import Any

import httpx
import jsonschema


class OpenApi:
    def __init__(self, doc: dict[str, Any]) -> None:
        jsonschema.Draft202012Validator.check_schema({"$defs": doc["components"]["schemas"]})
        self.doc = doc
        self._routes = [
            (re.compile("^" + re.sub(r"{\w+}", "[^/]+", path) + "$"), path) for path in doc["paths"]
        ]
        self.checked: list[tuple[str, str, int]] = []  # what was checked, for coverage

    def operation(self, method: str, path: str) -> tuple[str, dict[str, Any]]:
        for pattern, template in self._routes:
            if pattern.match(path):
                ops = self.doc["paths"][template]
                if method.lower() in ops:
                    return template, ops[method.lower()]
        raise AssertionError(f"{method} {path} is not in /openapi.json")

    def validate(self, schema: dict[str, Any], value: Any) -> None:
        # refs are "#/components/schemas/X": resolve them against a document that has them
        wrapped = {**schema, "components": self.doc["components"]}
        jsonschema.Draft202012Validator(wrapped).validate(value)

    def check(self, response: httpx.Response) -> None:
        request = response.request
        # the path as sent: an id's '/' is %2F there, one segment as the template has it
        path = request.url.raw_path.decode("ascii").partition("?")[0]
        template, op = self.operation(request.method, path)
        status = str(response.status_code)
        assert status in op["responses"], (
            f"{request.method} {template} answered {status}, not documented: {response.text}"
        )
        self.checked.append((request.method, template, response.status_code))
        content = op["responses"][status].get("content")
        if not content:
            return
        media = response.headers["content-type"].split(";")[0]
        assert media in content, f"{request.method} {template} {status}: {media} not in {content}"
        spec = content[media]
        if media == "text/event-stream":
            for kind, data in parse_events(response.text):
                if kind in spec.get("x-events", {}):
                    self.validate(spec["x-events"][kind], data)
        elif media.endswith("json"):
            self.validate(spec["schema"], response.json())


def parse_events(text: str) -> list[tuple[str, Any]]:
    """``(event, decoded data)`` of each event in a Server-Sent Events body."""
    out = []
    for block in text.split("\n\n"):
        kind, data = "message", []
        for line in block.split("\n"):
            if line.startswith("event: "):
                kind = line[7:]
            elif line.startswith("data: "):
                data.append(line[6:])
        if data:
            out.append((kind, json.loads("\n".join(data))))
    return out
