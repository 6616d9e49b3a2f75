"""Where apps meet the client: the TCP proxy's tunnel ports and the IPC sockets, the local
listeners they share, and the datasite walk that finds their markers."""
