"""
Access logs in the combined log format, written to a file of their own and
rotated by size, for the gateway and for each instance.

Without a file, a site's access lines go to the host's log, as Twisted's do.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from twisted.python.logfile import LogFile
from twisted.web.http import HTTPFactory

__all__ = ["log_access_to"]


def log_access_to(site: HTTPFactory, path: Path, max_bytes: int, keep: int) -> None:
    """
    Make C{site} write its access log to C{path}, rotating it when it reaches
    C{max_bytes} and keeping C{keep} old copies (C{path.1}, C{path.2}, ...).
    The file is opened when the site starts listening.
    """

    def open_log_file(ignored: Any) -> LogFile:
        return LogFile(
            path.name,
            str(path.parent),
            rotateLength=max_bytes,
            maxRotatedFiles=keep or None,
            defaultMode=0o640,
        )

    site.logPath = str(path)
    # HTTPFactory documents _openLogFile as the hook for other log files.
    site._openLogFile = open_log_file  # type: ignore[method-assign,assignment]
