"""What the settings mean for one sandboxed run: isolation, limits, code checkpoints."""

from __future__ import annotations

from store.settings import Settings
from worker.sandbox.launcher import Isolation, available_isolation
from worker.sandbox.protocol import Limits, TeacherInput


def isolation_for(settings: Settings) -> Isolation:
    """The isolation ``KDSERVE_SANDBOX`` asks for, as far as this machine allows.

    Raises:
        RuntimeError: ``bwrap`` is required but cannot run here.
    """
    if settings.sandbox == "process":
        return "process"
    found = available_isolation()
    if settings.sandbox == "bwrap" and found != "bwrap":
        raise RuntimeError(
            "KDSERVE_SANDBOX=bwrap, but bubblewrap cannot create namespaces on this worker "
            "(install bubblewrap, and allow user namespaces in the container's seccomp "
            "profile), or set KDSERVE_SANDBOX=auto"
        )
    return found


def limits_for(settings: Settings) -> Limits:
    return Limits(
        memory_mb=settings.sandbox_memory_mb,
        file_mb=settings.sandbox_max_file_mb,
        threads=settings.sandbox_threads,
    )


def code_checkpoints(settings: Settings) -> tuple[bool, str | None]:
    """Whether teachers may run their code in the sandbox, and if the operator enabled that
    but this worker cannot confine them, the message that refuses them."""
    if not settings.allow_code_checkpoints:
        return False, None
    if isolation_for(settings) == "bwrap":
        return True, None
    return False, (
        "this teacher is a TorchScript or torch.export file, which carries code; code "
        "checkpoints are enabled, but this worker cannot sandbox them (bubblewrap namespaces "
        "are unavailable), so it refuses to load them. Send the weights as safetensors or a "
        "state dict with an architecture spec instead"
    )


def teacher_input(settings: Settings, path: str, arch: object) -> TeacherInput:
    allow, refusal = code_checkpoints(settings)
    return TeacherInput(path=path, arch=arch, allow_code=allow, code_refusal=refusal)
