"""End-to-end encryption in the client: the key files and the sessions' shared context."""
