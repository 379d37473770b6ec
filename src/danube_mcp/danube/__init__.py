"""The Danube REST client: requests, errors, scrubbing of upstream echoes, TLS trust roots.

This package never imports the tool, a transport or the MCP SDK.
"""
