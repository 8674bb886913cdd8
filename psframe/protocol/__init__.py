"""Frames: the command vocabulary and the pure encode/decode of multipart messages."""
from .commands import PROTOCOL_VERSION, Command
from .codec import ArrayDesc, Message, encode, decode

__all__ = ["PROTOCOL_VERSION", "Command", "ArrayDesc", "Message", "encode", "decode"]
