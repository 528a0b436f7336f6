"""autoresearch, caged: the host controller (policy, proposers, patch checks, git, sandbox, decision, ledger, CLI, report)."""
__version__ = "0.1.0"
