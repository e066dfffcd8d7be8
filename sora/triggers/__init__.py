"""Triggers other than HTTP: schedules and file watchers (issue 18).

`schedule` parses schedule expressions (rate, EventBridge cron, at, 5-field cron) into fire
times; `shapes` builds the events a firing sends (EventBridge's Scheduled Event, S3's event
notification). The trigger service, the gateway and the CLI share this package.
"""
