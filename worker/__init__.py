"""VSML Lab's worker: Celery tasks that turn a queued run into training.

`worker.app` is the Celery application; `worker.tasks.execute_run` takes a
run id, and `worker.supervisor` runs the training as a child process
(`python -m worker.child RUN_ID`) whose outputs `worker.sink` writes to the
database in batches.
"""
