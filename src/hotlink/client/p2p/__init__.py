"""The peer-to-peer path: the seam the manager offers frames to (``transport.py``) and the
WebRTC transport behind it, one peer connection per session."""
