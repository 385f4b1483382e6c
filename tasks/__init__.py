"""The Celery side of casesync: the app, the batch task, the intake bootstep, a process's runtime.

Importing this package builds nothing. ``celery -A tasks`` finds the app in :mod:`tasks.celery`,
the one module that builds it when imported; ``casesync worker`` builds its own from the settings.
"""
