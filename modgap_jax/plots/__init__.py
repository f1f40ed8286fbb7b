"""Matplotlib figures (Agg backend): one module per task."""
