"""One-line errors for the dmn_serve CLIs (the same contract as dmn-train / dmn-eval)."""

from __future__ import annotations

from dmn_model.cli_errors import err_console, user_errors_with

user_errors = user_errors_with()

__all__ = ["err_console", "user_errors"]
