"""One root exception for the package. Exceptions are for infrastructure and user errors; trial outcomes are data."""


class AutoresearchError(Exception):
    """Root of every error the runner raises on purpose. str(e) is one line: what failed and how to fix it.

    The CLI prints it without a traceback and exits non-zero.
    """


class UserError(AutoresearchError):
    """Bad input from the user: a policy, a CLI argument, a data directory, a repository state."""


class InfraError(AutoresearchError):
    """The machinery failed (Docker engine, image, disk): never blamed on a candidate."""


class ProposerError(AutoresearchError):
    """The proposer could not produce a candidate (endpoint down, retries exhausted)."""
