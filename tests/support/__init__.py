"""Test harness helpers shared by the suites (real processes, ports, coturn, namespaces)."""
