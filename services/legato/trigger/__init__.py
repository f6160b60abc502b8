"""The trigger service: the workflow registry, the request/reply API, and cron time triggers."""
