"""The one exception of data preparation (TRUSTED, host only).

`PrepareError` means bad input or a failed step that the user can fix; str(e) is ONE line: what failed, the value
found versus the value needed, and what to do. `trainer.prepare.main` prints it without a traceback and exits 2.
"""


class PrepareError(Exception):
    """Preparation cannot go on; the message is one line and names the input and the fix."""
