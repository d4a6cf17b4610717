"""Reading kidedge's own JSON files (manifests, training runs) with one-line errors."""

from __future__ import annotations

import json
import os
from pathlib import Path

from kidedge.errors import KidedgeError


def read_json(path: str | os.PathLike, what: str = "file") -> object:
    """The parsed JSON of ``path``; a one-line :class:`KidedgeError` naming ``what`` when
    it cannot be read or is not JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise KidedgeError(f"{path}: {what} is not valid JSON ({type(exc).__name__}: {str(exc).splitlines()[0]})") from None
    except OSError as exc:
        raise KidedgeError(f"{path}: cannot read the {what} ({exc.strerror or exc})") from None
