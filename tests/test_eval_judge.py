"""The OpenAI-compatible judge against a local stdlib HTTP server, and the judge configuration rules."""

import json
import threading
from http.server import BaseHTTPRequestHandler, HTTPServer

import pytest

from stop_hf.eval.judge import JudgeError, OpenAIJudge, judge_from_args


class _Handler(BaseHTTPRequestHandler):
    seen = []

    def do_POST(self):  # noqa: N802
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        _Handler.seen.append((self.path, self.headers.get("Authorization"), body))
        payload = json.dumps({"choices": [{"message": {"content": " Yes. "}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(payload)

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = HTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    httpd.shutdown()


def test_openai_judge_roundtrip(server):
    judge = OpenAIJudge(server + "/", "judge-model", api_key="k")
    assert judge("Is it consistent?") == "Yes."
    path, auth, body = _Handler.seen[-1]
    assert path == "/v1/chat/completions" and auth == "Bearer k"
    assert body["model"] == "judge-model" and body["temperature"] == 0
    assert body["messages"] == [{"role": "user", "content": "Is it consistent?"}]


def test_judge_errors_and_config(monkeypatch):
    with pytest.raises(JudgeError):
        OpenAIJudge("http://127.0.0.1:9/v1", "m", retries=1, timeout=1)("x")
    for var in ("STOP_HF_JUDGE_URL", "STOP_HF_JUDGE_MODEL", "STOP_HF_JUDGE_API_KEY", "OPENAI_API_KEY"):
        monkeypatch.delenv(var, raising=False)
    assert judge_from_args(None, None) is None
    with pytest.raises(ValueError, match="model"):
        judge_from_args("http://x/v1", None)
    monkeypatch.setenv("STOP_HF_JUDGE_URL", "http://x/v1")
    monkeypatch.setenv("STOP_HF_JUDGE_MODEL", "m")
    monkeypatch.setenv("OPENAI_API_KEY", "sk")
    judge = judge_from_args(None, None)
    assert judge.model == "m" and judge.api_key == "sk"
