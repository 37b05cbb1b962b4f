"""Measurements (size, duplicates, probes, LogME) and the pure strategy decision."""
