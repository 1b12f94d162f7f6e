"""The one exception type that means "the user asked for something we cannot do"."""


class DabenchError(Exception):
    """Bad usage or bad input. The CLI prints the message as one paragraph and exits with 2.

    Messages say what was wrong, what was expected, and what to do.
    """


class RunFailed(Exception):
    """Training stopped (e.g. a non-finite loss). The CLI reports it with exit code 1. ``step``: where
    a non-finite loss stopped it (the runner records it in the run folder's ``failed``)."""

    step: int | None = None
