"""The openai proposer against a scripted OpenAI-compatible server on 127.0.0.1, with the real openai client."""
import time

import pytest

from runner.errors import ProposerError, UserError
from runner.policy import ProposerSettings
from runner.proposers.base import Context
from runner.proposers.openai_llm import OpenAIProposer
from tests.llm_server import MODEL, search_replace

TRAIN = "import torch\n\nMATRIX_LR = 0.04  # Muon lr\nDEPTH = 4  # blocks\n"
GOOD = search_replace("train.py", "MATRIX_LR = 0.04  # Muon lr\n", "MATRIX_LR = 0.05  # Muon lr\n",
                      "raise the Muon learning rate")
MISSES = search_replace("train.py", "MATRIX_LR = 0.4  # Muon lr\n", "MATRIX_LR = 0.5  # Muon lr\n", "typo")


def proposer(server, slept=None, **cfg):
    config = ProposerSettings(kind="openai", base_url=server.base_url, model=MODEL,
                            api_key_env="AUTORESEARCH_TEST_NO_SUCH_KEY", **{"timeout_seconds": 5, **cfg})
    return OpenAIProposer(config, backoff_base=0.01, sleep=(slept.append if slept is not None else time.sleep))


def ctx(history=()):
    return Context(trial_id=3, seed=1, files={"train.py": TRAIN}, allowed_files=["train.py"],
                   program="Make val_bpb go down.", history=list(history), best_bpb=1.234567, parent="abc")


def test_a_good_patch_becomes_a_proposal_with_its_usage(llm_server):
    llm_server.push({"reply": GOOD})
    history = [{"trial": 1, "status": "crash", "val_bpb": None, "description": "DEPTH 4 -> 40",
                "reason": "exit 1", "log_tail": "RuntimeError: out of memory"}]
    p = proposer(llm_server).propose(ctx(history))
    assert p.files == {"train.py": TRAIN.replace("0.04", "0.05")}
    assert p.description == "raise the Muon learning rate" and p.raw_reply == GOOD and not p.error
    assert p.usage["calls"] == 1 and p.usage["total_tokens"] > 0 and p.usage["model"] == MODEL
    prompt = "\n".join(m["content"] for m in llm_server.requests[0]["messages"])
    assert "Make val_bpb go down." in prompt and "MATRIX_LR = 0.04" in prompt and "1.234567" in prompt
    assert "DEPTH 4 -> 40" in prompt and "RuntimeError: out of memory" in prompt
    assert llm_server.requests[0]["model"] == MODEL


def test_a_patch_that_does_not_apply_is_retried_with_the_error_fed_back(llm_server):
    llm_server.push({"reply": MISSES}, {"reply": GOOD})
    p = proposer(llm_server).propose(ctx())
    assert p.description == "raise the Muon learning rate" and p.usage["calls"] == 2 and p.usage["retries"] == 1
    second = llm_server.requests[1]["messages"]
    assert second[-2] == {"role": "assistant", "content": MISSES}
    assert "SEARCH text not found in train.py" in second[-1]["content"]


def test_garbage_replies_end_in_a_rejection_after_the_retries(llm_server):
    llm_server.push(*[{"reply": "Let me think about this... I would raise the learning rate."}] * 3)
    p = proposer(llm_server, max_retries=2).propose(ctx())
    assert p.files == {} and "after 3 tries" in p.error and "no '<<<<<<< SEARCH" in p.error
    assert len(llm_server.requests) == 3 and p.usage["calls"] == 3


def test_a_reply_that_changes_nothing_is_retried(llm_server):
    noop = search_replace("train.py", "DEPTH = 4  # blocks\n", "DEPTH = 4  # blocks\n", "nothing")
    llm_server.push({"reply": noop}, {"reply": GOOD})
    p = proposer(llm_server).propose(ctx())
    assert p.usage["calls"] == 2 and "change nothing" in llm_server.requests[1]["messages"][-1]["content"]


def test_a_rate_limit_is_retried_after_its_retry_after(llm_server):
    slept = []
    llm_server.push({"status": 429, "retry_after": "0.2"}, {"reply": GOOD})
    p = proposer(llm_server, slept).propose(ctx())
    assert p.files and p.usage["backoffs"] == 1 and slept == [0.2]


def test_a_server_error_is_retried_with_exponential_backoff(llm_server):
    slept = []
    llm_server.push({"status": 500}, {"status": 503}, {"reply": GOOD})
    p = proposer(llm_server, slept).propose(ctx())
    assert p.files and slept == [0.01, 0.02]


def test_a_server_error_that_persists_stops_the_run_with_one_line(llm_server):
    llm_server.push(*[{"status": 500}] * 3)
    with pytest.raises(ProposerError) as e:
        proposer(llm_server, [], max_backoff_retries=2).propose(ctx())
    assert "failed 3 times" in str(e.value) and "HTTP 500" in str(e.value) and "\n" not in str(e.value)


def test_a_hang_past_the_timeout_is_cut_off(llm_server):
    llm_server.push({"hang": 5}, {"reply": GOOD})
    t0 = time.monotonic()
    p = proposer(llm_server, [], timeout_seconds=0.5, max_backoff_retries=1).propose(ctx())
    assert p.files and p.usage["backoffs"] == 1 and time.monotonic() - t0 < 4


def test_a_hang_on_every_try_is_a_proposer_error(llm_server):
    llm_server.push({"hang": 3}, {"hang": 3})
    with pytest.raises(ProposerError, match="timed out"):
        proposer(llm_server, [], timeout_seconds=0.3, max_backoff_retries=1).propose(ctx())


def test_an_auth_error_is_not_retried(llm_server):
    llm_server.push({"status": 401, "message": "bad key"}, {"reply": GOOD})
    with pytest.raises(ProposerError, match="HTTP 401 .bad key"):
        proposer(llm_server).propose(ctx())
    assert len(llm_server.requests) == 1


def test_a_refused_connection_is_a_proposer_error(llm_server):
    config = ProposerSettings(kind="openai", base_url="http://127.0.0.1:9/v1", model=MODEL, max_backoff_retries=1,
                            api_key_env="AUTORESEARCH_TEST_NO_SUCH_KEY")
    with pytest.raises(ProposerError, match="failed 2 times"):
        OpenAIProposer(config, backoff_base=0.01).propose(ctx())


def test_the_real_openai_endpoint_needs_a_key(monkeypatch):
    monkeypatch.delenv("AUTORESEARCH_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(UserError, match=r"\$AUTORESEARCH_TEST_NO_SUCH_KEY"):
        OpenAIProposer(ProposerSettings(kind="openai", api_key_env="AUTORESEARCH_TEST_NO_SUCH_KEY"))


def test_each_backoff_and_re_ask_is_reported_before_its_wait(llm_server):
    heard = []
    llm_server.push({"status": 500}, {"status": 429, "retry_after": "0.2"}, {"reply": MISSES}, {"reply": GOOD})
    p = proposer(llm_server)
    p.sleep = lambda seconds: heard.append(f"sleep {seconds:g}")
    p.notify = heard.append
    assert p.propose(ctx()).files
    assert heard == ["retry 1/5 after HTTP 500, waiting 0.01 s", "sleep 0.01",
                     "retry 2/5 after HTTP 429, waiting 0.2 s", "sleep 0.2",
                     "reply unusable (block 1: SEARCH text not found in train.py), re-asking (2/4)"]


def test_only_the_tries_that_follow_are_reported(llm_server):
    heard = []
    llm_server.push(*[{"reply": "no blocks here"}] * 3)
    p = proposer(llm_server, max_retries=2)
    p.notify = heard.append
    assert p.propose(ctx()).error
    assert [h.rsplit(" ", 1)[-1] for h in heard] == ["(2/3)", "(3/3)"]     # the last unusable reply asks nothing

    heard.clear()
    llm_server.push(*[{"status": 502}] * 2)
    p = proposer(llm_server, [], max_backoff_retries=1)
    p.notify = heard.append
    with pytest.raises(ProposerError):
        p.propose(ctx())
    assert heard == ["retry 1/1 after HTTP 502, waiting 0.01 s"]          # the last failure waits for nothing
