"""Errors with a message meant for the user: the CLIs print them as one line and exit non-zero."""


class DataError(Exception):
    """Bad user input (a path, a name, a file's content). The message names the value and the fix."""


class SkipItem(Exception):
    """One input item is unusable; the build counts it under ``reason`` (or stops under --strict)."""

    def __init__(self, reason: str, detail: str):
        super().__init__(reason, detail)  # args must rebuild it: it crosses process boundaries
        self.reason = reason
        self.detail = detail

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"
