"""The server role: one shard of every key's value and optimizer state."""
