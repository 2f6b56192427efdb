"""The management command tables shared by every transport (MI FIFO, JSON-RPC FIFO, ctl)."""
