"""The scheduler role: rendezvous, rank checks, key placement, barriers, liveness, shutdown."""
