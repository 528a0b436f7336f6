"""Proposers: where candidate changes come from (`mutate`: offline; `openai`: any OpenAI-compatible LLM). TRUSTED."""
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
