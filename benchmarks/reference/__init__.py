"""The pure-Python reference core: the behaviour spec written the plain way."""
