"""The HTTP server: the only package that imports aiohttp.web."""
