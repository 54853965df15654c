"""Certification: confidence bounds, noise streams, image selection, shard I/O and the
per-image rows that ``pefts certify`` and ``pefts predict`` write.

``pefts.smoothing.Smooth`` is the Cohen-compatible certifier built on these parts.
"""
