"""Benchmarks: LFW protocol, verification metrics over folds, the classification experiment."""
