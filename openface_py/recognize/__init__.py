"""Naming people from embeddings: verification of two faces, classifiers with open-set rejection
and calibration, Joint Bayesian, the Siamese verifier, galleries, the face database (SQLite +
FAISS 1:N search) and video recognition."""
