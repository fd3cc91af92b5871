"""Folder jobs: process pools, journals, owned output folders, align/represent/run."""
