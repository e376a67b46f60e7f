"""Turning request records into the paper's metrics, figures and report."""
