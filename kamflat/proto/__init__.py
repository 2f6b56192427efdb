"""Pure protocol code: bytes in, events out; no IO, no processes (see tests/test_purity.py)."""
