"""Isolation shared by the supervisor, the runtime pool and the workers: the bubblewrap
sandbox, cgroup limits and per-instance secrets. Depends on nothing of any one process's
package, so each of them can import it."""
