"""Streams: one hotlink session per direction of a tunnel or IPC folder (open, accept, seq
numbers, reorder, flow credit, end of stream), independent of which path carries the frames."""
