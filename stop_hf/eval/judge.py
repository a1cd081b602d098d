"""LLM judges for the GPT-judged parts. A judge is any object with `__call__(prompt: str) -> str`.

`OpenAIJudge` talks to an OpenAI-compatible `/chat/completions` endpoint with the stdlib only (urllib).
Without a judge, judged samples are recorded as skipped, never guessed."""

from __future__ import annotations

import json
import os
import time
import urllib.error
import urllib.request
from typing import Protocol


class Judge(Protocol):
    name: str

    def __call__(self, prompt: str) -> str: ...


class JudgeError(RuntimeError):
    pass


class OpenAIJudge:
    """`base_url` like https://api.openai.com/v1 or http://localhost:8000/v1 (vLLM, llama.cpp, ...)."""

    def __init__(
        self, base_url: str, model: str, api_key: str | None = None, timeout: float = 60.0, retries: int = 3
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.api_key = api_key
        self.timeout = timeout
        self.retries = retries
        self.name = f"{model}@{self.base_url}"

    def __call__(self, prompt: str) -> str:
        body = json.dumps(
            {"model": self.model, "messages": [{"role": "user", "content": prompt}], "temperature": 0}
        ).encode()
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        url = f"{self.base_url}/chat/completions"
        last: Exception | None = None
        for attempt in range(self.retries):
            request = urllib.request.Request(url, data=body, headers=headers, method="POST")
            try:
                with urllib.request.urlopen(request, timeout=self.timeout) as response:
                    payload = json.loads(response.read().decode())
                return str(payload["choices"][0]["message"]["content"]).strip()
            except (urllib.error.URLError, TimeoutError, KeyError, IndexError, json.JSONDecodeError) as exc:
                last = exc
                time.sleep(min(2**attempt, 8) * 0.5)
        raise JudgeError(f"judge request to {url} failed: {last}")


def judge_from_args(url: str | None, model: str | None, api_key: str | None = None) -> OpenAIJudge | None:
    """A judge from CLI flags, falling back to STOP_HF_JUDGE_URL / STOP_HF_JUDGE_MODEL / STOP_HF_JUDGE_API_KEY
    (then OPENAI_API_KEY). None when no endpoint is configured."""
    url = url or os.environ.get("STOP_HF_JUDGE_URL")
    if not url:
        return None
    model = model or os.environ.get("STOP_HF_JUDGE_MODEL")
    if not model:
        raise ValueError("a judge endpoint needs a model name (--judge-model or STOP_HF_JUDGE_MODEL)")
    key = api_key or os.environ.get("STOP_HF_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")
    return OpenAIJudge(url, model, key)
