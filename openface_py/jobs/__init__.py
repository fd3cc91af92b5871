"""Folder jobs: process pools, journals, owned output folders, align/represent/run, ``db import``,
and the engines (local processes or Ray) that run a face stage over many photos."""
