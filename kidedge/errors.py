"""Errors that reach the user.

A ``KidedgeError`` is a problem with what the user gave us (a missing file, a scan that is
not a CT, a tampered model package). The CLI prints its message as one line and exits 2.
Anything else is a bug in kidedge: one line, exit 1, and the traceback only with
``KIDEDGE_DEBUG=1``.
"""

from __future__ import annotations


class KidedgeError(Exception):
    """A user error: the message is one line that names the file and the problem."""

    exit_code = 2


class NotReadyError(KidedgeError):
    """A command whose implementation is not available in this build."""
