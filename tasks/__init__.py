"""Prefect tasks and the I/O around the pure functions of ``fusion_models``.

A stage module holds pure xarray-level helpers first, the checkpointed I/O function next (the one
the CLI and Python callers use) and a thin ``@task`` last. The modules:

- the contract: ``cube`` (the cube schema, reading helpers), ``checkpoint`` (manifests, keys, code
  versions, atomic writes), ``locks`` (one writer per cube), ``errors`` (the project's exceptions),
  ``legends`` (the NLCD classes and colours)
- configuration: ``catalog`` (``data_catalog.yaml``), ``adhoc`` (a catalog made for a user's own
  files by ``fusioncube ingest PATH...``: product presets, band files, sidecar masks), ``aoi``
- scenes -> cube: ``discover`` (globs, dates), ``radiometry`` (per-scene scale from a product's
  metadata), ``validate`` (Great Expectations), ``warp`` (a scene onto the cube's grid),
  ``class_maps`` (class maps' fill code and resampling, also for the stages' label rasters),
  ``ingest`` (planning the parts, reading and mosaicking them, the cube's manifest),
  ``cube_store`` (the changes to the cube's Zarr store: appending, mosaicking or replacing dates,
  the date-order rewrite)
- stages: ``patch``, ``anomalies``, ``gapfill``, ``compress``, ``labels``, ``classify``; ``stages``
  (the table the pipeline runs from)
- for people: ``quicklook`` (pictures, class-map COGs, Prefect artifacts), ``info`` (``fusioncube
  info``), ``pipeline_report`` (a run's summary), ``runlog`` (a stage's warnings kept for it),
  ``export`` (dates as COGs)
- the built-in sample area: ``sample_area`` (generator), ``_sample_textures``, ``sample_area_task``
- ``faults``: fault injection for the reliability benchmark
"""
