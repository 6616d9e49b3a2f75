"""Where apps meet the client: the TCP proxy's tunnel ports and the IPC sockets, the local
listeners they share, the file watcher that tells them what changed in the datasites tree,
and the walk that finds their markers."""
