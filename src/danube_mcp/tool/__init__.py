"""The ``store_credential`` tool: its schema, argument checks, result shape and handler."""
