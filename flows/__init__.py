"""Prefect flows (orchestration only) and the ``fusioncube`` command line (``flows.cli``)."""
