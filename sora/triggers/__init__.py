"""Scheduled and file triggers: their config's expressions and event shapes, the trigger
service that fires them (one per host) and the client of its control socket."""
