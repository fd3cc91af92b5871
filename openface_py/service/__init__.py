"""The HTTP service: FastAPI app, web page."""
