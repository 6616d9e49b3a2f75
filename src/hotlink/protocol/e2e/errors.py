"""The one error of the end-to-end layer."""

from __future__ import annotations


class E2EError(Exception):
    """End-to-end protection failed: a forged or damaged frame, a bad or unexpected key, a
    plaintext frame where sealing was promised. The session must close loudly; ``reason``
    is what the logs, the status document and the peer are told."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
