"""The sans-I/O protocol core: messages, codecs, frames, ACLs, markers, ICE config.

Nothing in this package touches sockets, files, clocks or asyncio; callers pass in the
bytes, texts and times it works on.
"""
