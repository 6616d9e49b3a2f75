"""Network-namespace NAT tests: topology harness, coturn, raw WebRTC through NAT (needs root)."""
