"""Transports: stdio, the HTTP app with its security layer, and legacy SSE."""
