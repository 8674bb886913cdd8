"""Bytes between processes: addresses, zmq sockets, request/reply."""
