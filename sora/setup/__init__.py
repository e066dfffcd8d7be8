"""Running a function's setup commands (sora.setup.run), shared by the supervisor, the
workers (coldStart: always-setup), `sora invoke --local` and `sora validate`."""
