"""Evaluation metrics (paper §4.3, Table 3).

- :mod:`training.metrics.sync`: SyncNet-style AV offset / confidence at every level of a syncer pyramid
  (imports torch; import it explicitly where needed).
- :mod:`training.metrics.motion`: LMD and motion statistics (numpy only).

Nothing is imported here so that `import training.metrics` stays free of torch.
"""
