"""The one error type that bad input from the network or from files turns into."""


class ProtocolError(ValueError):
    """Input that does not follow the wire protocol or a file format.

    The message says what was wrong in words a person can act on; callers log it once and
    keep serving everything else.
    """
