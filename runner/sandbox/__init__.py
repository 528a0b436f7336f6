"""The Docker sandbox: every trial runs in locked-down containers. TRUSTED CODE (host side).

One concern per module:
    preflight   engine reachable, API version, image present, NVIDIA runtime when the policy wants a GPU
    spec        container/volume kwargs from the policy (pure functions: the whole hardening in one place)
    containers  create/start, stream logs on a bounded thread, wait with a hard timeout, kill, the engine's events
                for a container, copy a file out
    classify    exit code / OOMKilled / timeout / export exit 86 / eval status / outside events -> a trial status
    cleanup     remove containers and volumes in `finally`, and leftovers of earlier runs by label
    slot        a trial's containers started ahead and the hand-overs that feed them
    watchdog    a host process per slot that enforces its deadlines and removes it when its runner is gone
"""
