"""Secure input: the one-time page where a user types a credential the model never sees."""

from danube_mcp.secure_input.broker import PATH_PREFIX, SecureInputBroker

__all__ = ["PATH_PREFIX", "SecureInputBroker"]
