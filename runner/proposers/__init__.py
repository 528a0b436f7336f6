"""Proposers: where candidate changes come from (`mutate`: offline; `openai`: any OpenAI-compatible LLM). TRUSTED.

    base        what a proposer is handed (`Context`) and hands back (`Proposal`); the `Proposer` protocol
    mutate      the offline proposer: one UPPER_CASE hyperparameter nudged
    openai_llm  the LLM proposer: asks, retries, backs off
    prompt      what the LLM is shown
    reply       the LLM's reply format (DESCRIPTION line, SEARCH/REPLACE blocks), parsed and applied
Whatever proposer made it, a proposal then meets the patch policy (runner.patch), which imports no proposer.
The policy's `proposer` section (runner.policy.ProposerSettings) configures them.
"""
from __future__ import annotations

from ..errors import UserError
from ..policy import Policy
from .base import Context, Proposal, Proposer

KINDS = ("mutate", "openai")


def make(kind: str, policy: Policy) -> Proposer:
    """The proposer named `kind`, configured from the policy's `proposer` section."""
    if kind == "mutate":
        from .mutate import MutateProposer
        return MutateProposer()
    if kind == "openai":
        from .openai_llm import OpenAIProposer
        return OpenAIProposer(policy.proposer)
    raise UserError(f"unknown proposer {kind!r}; use one of: {', '.join(KINDS)}")


__all__ = ["Context", "Proposal", "Proposer", "make", "KINDS"]
