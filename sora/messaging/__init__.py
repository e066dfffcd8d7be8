"""The messaging client: how gateways, the dispatcher and `sora invoke --local` send
invocations (shared by those processes)."""
