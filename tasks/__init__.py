"""Prefect tasks and the I/O around the pure functions of ``fusion_models``.

Each stage module holds pure xarray-level helpers first, the checkpointed I/O function next and a
thin ``@task`` last: ``catalog`` (data_catalog.yaml), ``discover`` / ``validate`` / ``warp`` /
``ingest`` (scenes -> cube), ``patch``, ``anomalies``, ``gapfill``, ``checkpoint`` (manifests,
atomic writes), ``cube`` (the schema), ``quicklook``, ``sample_area`` (the built-in sample area).
"""
