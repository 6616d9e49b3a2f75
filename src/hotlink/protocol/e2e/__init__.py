"""End-to-end sealing of a hotlink stream, whichever path carries it (docs/SECURITY.md).

Pure state and cryptography (from the ``cryptography`` package), no I/O: the client moves the
signals and frames, keeps the key files, and asks these classes what to send and what to
believe.

* :mod:`.identity`: a client's long-term Ed25519 identity key and its fingerprint.
* :mod:`.pins`: which identity key each peer (by email) is trusted with.
* :mod:`.handshake`: the signed X25519 exchange carried in ``e2e_hello`` signals, and the
  per-direction keys it derives.
* :mod:`.seal`: sealing and opening frames with those keys.
* :mod:`.session`: one hotlink session's end-to-end state (pending, sealed or plaintext).
"""
