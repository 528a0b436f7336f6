"""The `openai` proposer: asks any OpenAI-compatible chat endpoint for a patch. TRUSTED CODE; replies are untrusted.

Works with OpenAI, vLLM, llama.cpp's server, Ollama (anything serving /v1/chat/completions): `base_url`, `model`
and the environment variable holding the key come from the policy's `proposer` section.

Per trial: send the prompt (`prompt.messages`); parse and apply the reply (`runner.proposers.reply`); when it
does not parse or apply, send the error back and ask again, at most `max_retries` times, after which the trial is
rejected with the last error. Transport failures are retried with exponential backoff (honouring Retry-After): 429, 5xx,
timeouts (`timeout_seconds` per call) and refused connections, at most `max_backoff_retries` times; after that, or
on any other HTTP error (401, 404, ...), a `ProposerError` stops the run (the trial has no ledger line, so
--resume runs it again). Token usage and time of every call are summed into `Proposal.usage`.

Each backoff and each re-ask is reported, as it happens and before its wait, through `notify` (a callable taking
one line, or None; runner.proposals sets it while the proposer works for a trial): "retry 2/5 after HTTP 500,
waiting 4 s", "reply unusable (<the error>), re-asking (2/3)". The error can quote the reply: show it escaped.
"""
from __future__ import annotations

import os
import time
from typing import Callable

import openai

from ..errors import ProposerError, UserError
from ..policy import ProposerSettings
from . import prompt, reply
from .base import Context, Proposal

NOTE_ERROR_CHARS = 100      # of a reply's error (its first clause), in the line that says it is asked again


def make_client(cfg: ProposerSettings) -> openai.OpenAI:
    key = os.environ.get(cfg.api_key_env)
    if not key:
        if cfg.base_url is None:
            raise UserError(f"the openai proposer needs an API key in ${cfg.api_key_env}; export it, or set "
                            "proposer.base_url in the policy to a local endpoint")
        key = "unused"  # local servers (vLLM, llama.cpp, Ollama) accept any key
    return openai.OpenAI(api_key=key, base_url=cfg.base_url, timeout=cfg.timeout_seconds, max_retries=0)


class OpenAIProposer:
    name = "openai"
    notify: Callable[[str], None] | None = None      # told each retry and backoff (runner.proposals sets it)

    def __init__(self, cfg: ProposerSettings, *, client: openai.OpenAI | None = None, backoff_base: float = 1.0,
                 backoff_cap: float = 60.0, sleep=time.sleep):
        self.cfg = cfg
        self.client = client or make_client(cfg)
        self.backoff_base = backoff_base
        self.backoff_cap = backoff_cap
        self.sleep = sleep

    @property
    def endpoint(self) -> str:
        return str(self.client.base_url)

    def propose(self, ctx: Context) -> Proposal:
        usage = {"calls": 0, "prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0, "seconds": 0.0,
                 "retries": 0, "backoffs": 0, "model": self.cfg.model}
        msgs = prompt.messages(ctx, self.cfg.history)
        error = ""
        text = ""
        for attempt in range(self.cfg.max_retries + 1):
            usage["retries"] = attempt
            text = self._complete(msgs, usage)
            try:
                parsed = reply.parse_reply(text)
                files = reply.apply_blocks(ctx.files, parsed.blocks, known=set(ctx.allowed_files))
                if all(ctx.files.get(p) == t for p, t in files.items()):
                    raise reply.ReplyError("the blocks change nothing (every REPLACE equals its SEARCH)")
                return Proposal(files=files, description=parsed.description, usage=usage, raw_reply=text)
            except reply.ReplyError as e:
                error = str(e)
                if attempt < self.cfg.max_retries:
                    self._note(f"reply unusable ({error.split('; ')[0][:NOTE_ERROR_CHARS]}), re-asking "
                               f"({attempt + 2}/{self.cfg.max_retries + 1})")
                msgs = msgs + [{"role": "assistant", "content": text},
                               {"role": "user", "content": prompt.retry_message(error)}]
        return Proposal(files={}, description="(no usable reply)", usage=usage, raw_reply=text,
                        error=f"reply unusable after {self.cfg.max_retries + 1} tries: {error}")

    def _complete(self, msgs: list[dict], usage: dict) -> str:
        """One chat completion with backoff on transient failures; returns the reply text ('' if none)."""
        for k in range(self.cfg.max_backoff_retries + 1):
            t0 = time.monotonic()
            try:
                resp = self.client.chat.completions.create(model=self.cfg.model, messages=msgs,
                                                           temperature=self.cfg.temperature,
                                                           timeout=self.cfg.timeout_seconds)
            except (openai.RateLimitError, openai.InternalServerError, openai.APIConnectionError) as e:
                usage["seconds"] += time.monotonic() - t0
                if k == self.cfg.max_backoff_retries:
                    raise ProposerError(f"endpoint {self.endpoint} failed {k + 1} times, last: {_describe(e)}; "
                                        "check that the server is up and not overloaded, then --resume") from None
                usage["backoffs"] += 1
                delay = self._delay(e, k)
                self._note(f"retry {k + 1}/{self.cfg.max_backoff_retries} after {_describe(e)}, waiting {delay:.3g} s")
                self.sleep(delay)
                continue
            except openai.APIStatusError as e:
                body = e.body.get("message") if isinstance(e.body, dict) else None
                detail = " ".join(str(body or e.message or "").split())[:120]
                raise ProposerError(f"endpoint {self.endpoint} answered HTTP {e.status_code} ({detail}); "
                                    f"check proposer.model ({self.cfg.model!r}) and ${self.cfg.api_key_env}") from None
            usage["seconds"] += time.monotonic() - t0
            usage["calls"] += 1
            if resp.usage is not None:
                for key in ("prompt_tokens", "completion_tokens", "total_tokens"):
                    usage[key] += getattr(resp.usage, key, 0) or 0
            choice = resp.choices[0] if resp.choices else None
            return (choice.message.content or "") if choice and choice.message else ""
        raise AssertionError("unreachable")

    def _note(self, text: str) -> None:
        if self.notify is not None:
            self.notify(text)

    def _delay(self, err: Exception, k: int) -> float:
        resp = getattr(err, "response", None)
        retry_after = resp.headers.get("retry-after") if resp is not None else None
        try:
            if retry_after is not None:
                return min(max(float(retry_after), 0.0), self.backoff_cap)
        except ValueError:
            pass
        return min(self.backoff_base * 2 ** k, self.backoff_cap)


def _describe(e: Exception) -> str:
    if isinstance(e, openai.APITimeoutError):
        return "timed out"
    if isinstance(e, openai.APIStatusError):
        return f"HTTP {e.status_code}"
    return " ".join(str(e).split())[:120] or type(e).__name__
