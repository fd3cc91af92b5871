"""Training NN4-small2 weights by distillation from dlib's ResNet (see ``prepare`` and ``distill``)."""
