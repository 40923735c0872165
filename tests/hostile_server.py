"""A whoAsr look-alike that announces far too much: 1,000 model types with 150-character names (some with
characters no label should carry) and a 10,000-character version with control characters. Run as
`python -m tests.hostile_server --port N`; it serves /health, /model/info and /openapi.json."""

from __future__ import annotations

import argparse
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODELS = 1000
NAME_CHARS = 150
VERSION = "9." + "\x07" + "x" * 9997


def model_names() -> list[str]:
    names = ["streaming_asr", "offline_asr", "punctuation", "vad", "timestamp"]
    names += [f"model {i:04d} /" + "n" * NAME_CHARS for i in range(MODELS - len(names))]
    return [name[:NAME_CHARS] for name in names]


def documents() -> dict[str, bytes]:
    services = {name: {"loaded": True} for name in model_names()}
    health = {"status": "healthy", "services": services, "total_loaded": len(services),
              "system": {"cpu_usage_percent": 10.0}, "api_info": {"version": VERSION}}
    model_info = {"models": services, "total_loaded": len(services)}
    openapi = {"openapi": "3.1.0", "info": {"title": "hostile", "version": VERSION},
               "paths": {"/offline/recognize": {}, "/health": {}, "/model/info": {}}}
    return {path: json.dumps(document).encode() for path, document in
            (("/health", health), ("/model/info", model_info), ("/openapi.json", openapi))}


class Handler(BaseHTTPRequestHandler):
    answers = documents()

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.answers.get(self.path)
        self.send_response(200 if body else 404)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body or b"")))
        self.end_headers()
        self.wfile.write(body or b"")

    def log_message(self, *args) -> None:
        pass


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    ThreadingHTTPServer(("127.0.0.1", args.port), Handler).serve_forever()


if __name__ == "__main__":
    main()
