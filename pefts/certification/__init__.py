"""Certification: confidence bounds, noise streams, image selection, shard I/O and the
per-image rows that ``pefts certify`` and ``pefts predict`` write.

``smoothing.Smooth`` is the Cohen-compatible certifier built on these parts (re-exported
as ``pefts.smoothing.Smooth``).
"""
