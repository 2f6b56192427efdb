"""The command-line tools: serve, send, check, the fifo and rpc clients, cat/follow, gen."""
