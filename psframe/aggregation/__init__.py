"""The per-host tier: summing the gradients of local devices/workers before they leave the host."""
