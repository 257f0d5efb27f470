"""User-facing errors: each carries one line that names the thing at fault and what was expected.

Entry points catch :class:`EchoError` and print ``echo: error: <message>`` with a non-zero exit
code instead of a traceback.
"""


class EchoError(Exception):
    """Base class: an error whose message is a complete one-line explanation for the user."""


class ConfigError(EchoError):
    """params.yaml (or a CLI option) has an unknown key, wrong type or out-of-range value."""


class AudioError(EchoError):
    """An audio file is missing, empty, truncated, not audio, or holds non-finite samples."""


class CacheMismatchError(EchoError):
    """A cache (features, checkpoint) was written with a different front-end or model version."""
