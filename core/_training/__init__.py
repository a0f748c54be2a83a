"""Training, evaluation and prediction on tables: the engine behind ``polymodal train``,
``evaluate`` and ``predict``. Importing this package is light; the engine loads torch when run.
"""
