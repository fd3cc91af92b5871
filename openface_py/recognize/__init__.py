"""Naming people from embeddings: classifiers, Joint Bayesian, galleries, video recognition."""
