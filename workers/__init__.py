"""Celery application and tasks that run the pipeline continuously."""
