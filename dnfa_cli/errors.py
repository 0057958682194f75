"""Bad input from the user: the error types the CLI reports in one line with exit code 2,
and the helpers that word those lines."""
from __future__ import annotations

import json


class DnfaInputError(ValueError):
    """Bad input from the user (config, flags, ids): the CLI prints it and exits 2."""


class ConfigError(DnfaInputError):
    pass


def fmt_value(v) -> str:
    """A value as an error line quotes it: a string in quotes, anything else as JSON."""
    return json.dumps(v) if not isinstance(v, str) else repr(v)


def closest(key, candidates):
    """The candidate a mistyped key most likely meant, or None."""
    import difflib

    m = difflib.get_close_matches(key, sorted(candidates), n=1, cutoff=0.6)
    return m[0] if m else None
