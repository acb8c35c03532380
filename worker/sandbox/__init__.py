"""The job sandbox: kdcore runs in a child process that holds no secrets (see launcher)."""

from worker.sandbox.launcher import SandboxFailed, available_isolation, run_in_sandbox

__all__ = ["SandboxFailed", "available_isolation", "run_in_sandbox"]
