"""The HTTP service over a face database: the FastAPI app and web page, inference in worker
processes, request guards and the header deadline."""
