"""A scripted OpenAI-compatible HTTP server on 127.0.0.1 for tests (the real `openai` client talks to it).

Serves POST /v1/chat/completions from a script, one step per request, and GET /v1/models. Steps:
    {"reply": TEXT}                         200 with TEXT as the assistant message (usage counted from lengths)
    {"status": 429, "retry_after": "0"}     an error status (with a Retry-After header if given)
    {"hang": SECONDS}                       answer nothing for that long (past the client's timeout)
A callable step is called with the request's JSON and must return one of the above.
When the script runs out, the server answers 400 ("script exhausted") so a test that asks too often fails.
Every request's JSON is kept in `requests` for assertions.
"""
from __future__ import annotations

import json
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

MODEL = "test-model"


class LLMServer:
    def __init__(self, steps=()):
        self.steps = deque(steps)
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        self.httpd: ThreadingHTTPServer | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}/v1"

    def push(self, *steps) -> None:
        with self.lock:
            self.steps.extend(steps)

    def __enter__(self) -> "LLMServer":
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *a):  # keep test output clean
                pass

            def _send(self, code: int, body: dict, headers: dict | None = None) -> None:
                data = json.dumps(body).encode()
                try:
                    self.send_response(code)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    for k, v in (headers or {}).items():
                        self.send_header(k, v)
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (timeout tests)

            def do_GET(self):
                if self.path.rstrip("/").endswith("/models"):
                    self._send(200, {"object": "list", "data": [{"id": MODEL, "object": "model", "created": 0,
                                                                 "owned_by": "tests"}]})
                else:
                    self._send(404, {"error": {"message": f"no route {self.path}"}})

            def do_POST(self):
                length = int(self.headers.get("Content-Length") or 0)
                req = json.loads(self.rfile.read(length) or b"{}")
                if not self.path.rstrip("/").endswith("/chat/completions"):
                    return self._send(404, {"error": {"message": f"no route {self.path}"}})
                with server.lock:
                    server.requests.append(req)
                    step = server.steps.popleft() if server.steps else None
                if callable(step):
                    step = step(req)
                if step is None:
                    return self._send(400, {"error": {"message": "script exhausted", "type": "invalid_request"}})
                if "hang" in step:
                    time.sleep(step["hang"])
                    return self._send(500, {"error": {"message": "hung"}})
                if "status" in step:
                    headers = {"Retry-After": step["retry_after"]} if "retry_after" in step else {}
                    return self._send(step["status"], {"error": {"message": step.get("message", "scripted"),
                                                                 "type": "scripted"}}, headers)
                text = step["reply"]
                prompt_tokens = sum(len(str(m.get("content", ""))) for m in req.get("messages", [])) // 4
                completion_tokens = len(text) // 4
                self._send(200, {
                    "id": f"chatcmpl-{len(server.requests)}", "object": "chat.completion", "created": 0,
                    "model": req.get("model", MODEL),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": text}}],
                    "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                              "total_tokens": prompt_tokens + completion_tokens}})

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.block_on_close = False
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def search_replace(path: str, search: str, replace: str, description: str) -> str:
    """A well-formed reply in the proposer's format."""
    return (f"DESCRIPTION: {description}\n\n<<<<<<< SEARCH {path}\n{search}=======\n{replace}>>>>>>> REPLACE\n")
