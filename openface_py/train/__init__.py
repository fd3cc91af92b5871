"""Learning embeddings: ``train-net`` (triplet, center, contrastive, Siamese and ArcFace losses on
the user's own aligned people) and the offline distillation of NN4-small2 from a stronger teacher
(``prepare``, ``leakage``, ``distill``)."""
