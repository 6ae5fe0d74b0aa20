"""Pipeline-parallel denoising of one stream across ranks (``streamgen generate --pp N``).

* ``schedule``: the pure scheduler (passes, dependencies, tick table, timing simulation);
* ``transport``: point-to-point messages between stages (in-process threads or torch.distributed)
  with liveness checks that turn a dead or hung rank into an error naming it;
* ``partition``: block partition balanced from measured per-block cost, and the scaling model;
* ``runtime``: one rank's loop and ``run_pipeline_parallel``, the entry point.
"""
