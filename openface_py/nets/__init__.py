"""Embedding networks (NN4-small2, MobileFaceNet, dlib's ResNet): the embedder table (``catalog``),
the embedders, their weights files, loaders and backends."""
