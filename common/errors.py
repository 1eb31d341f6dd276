"""The one error type for a value, key, file or option that is not allowed.

Every check raises it with a message that names the key (or file, or option), the value and what
is allowed; the launchers turn it into one line and exit 2 before any runtime starts.
"""

from __future__ import annotations


class ConfigError(ValueError):
    """A run-config value, key, file or option that is not allowed; the message says which."""
