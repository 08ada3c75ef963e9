"""The one place that runs subprocesses and touches the host."""
