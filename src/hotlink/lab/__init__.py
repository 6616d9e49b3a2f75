"""The lab: real hotlink processes on one machine, for the demo, the benchmarks and the tests.

Not part of the daemon or the relay; nothing in them imports it. One module per job:

- :mod:`~hotlink.lab.processes`: start the relay and client daemons as child processes,
  wait until they are ready, read their logs, stop them by pid;
- :mod:`~hotlink.lab.stack`: :class:`~hotlink.lab.stack.DevStack`, a relay and clients in
  one temp dir, stopped in order whatever happens;
- :mod:`~hotlink.lab.trees`: the reference test's tunnel layout and default ACLs (written
  with :mod:`hotlink.tunnels`, the code behind ``hotlink tunnel open``);
- :mod:`~hotlink.lab.netns`: sockets inside network namespaces;
- :mod:`~hotlink.lab.wan_link`: a user-space impaired link between namespaces
  (``python -m hotlink.lab.wan_link``);
- :mod:`~hotlink.lab.waiting`: polls shared by blocking and async waits.

The package imports nothing on its own, so ``python -m hotlink.lab.wan_link`` starts fast.
"""
