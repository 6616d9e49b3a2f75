"""The hotlink server."""
