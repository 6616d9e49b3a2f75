"""The demo: an embedded relay and clients on one machine, a tunnel, a report."""
