"""Serving: Triton model repository, engine, adapters, deploys and the client."""
