"""hotlink: fast, private byte streams between SyftBox datasites."""

__version__ = "0.1.0"
