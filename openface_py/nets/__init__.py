"""Embedding networks: NN4-small2 and its weight loaders and backends, the embedder registry."""
