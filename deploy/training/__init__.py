"""The training sidecar: jobs submitted over HTTP, run beside serving, their files registered when done."""
