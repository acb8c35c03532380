"""The two losses of the papers, as small pure functions."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_kl(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
    """``KL(softmax(t/T) ‖ softmax(s/T))``, summed over classes and averaged over the batch.

    Unscaled by ``T²``: its gradient w.r.t. a student logit is ``(q_i − p_i)/T`` per sample,
    which for zero-mean logits and large ``T`` approaches ``(z_i − v_i)/(N·T²)`` with ``N``
    the number of classes (Hinton et al. 2015, §2.1).
    """
    log_q = F.log_softmax(student_logits.float() / temperature, dim=-1)  # (B, K)
    log_p = F.log_softmax(teacher_logits.float() / temperature, dim=-1)  # (B, K)
    return F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    targets: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Knowledge distillation loss (Hinton, Vinyals, Dean 2015).

    ``alpha·CE(s, y) + (1 − alpha)·T²·KL(softmax(t/T) ‖ softmax(s/T))``, batch-mean.
    The ``T²`` keeps the soft term's gradients the same size whatever the temperature, so
    ``alpha`` means the same thing at every ``T``. Logits are computed at temperature ``T``
    for the soft term only; the hard term and inference use ``T = 1``.

    Returns:
        The loss, and its parts ``{"ce", "kd"}`` (detached) for logging.
    """
    ce = F.cross_entropy(student_logits.float(), targets)
    kd = soft_kl(student_logits, teacher_logits, temperature) * temperature**2
    loss = alpha * ce + (1.0 - alpha) * kd
    return loss, {"ce": ce.detach(), "kd": kd.detach()}


def hint_loss(hint: torch.Tensor, regressed: torch.Tensor) -> torch.Tensor:
    """FitNets hint loss (Romero et al. 2015, eq. 3): ``½‖u_h(x) − r(v_g(x))‖²``.

    The squared L2 distance is summed over each sample's features and averaged over the batch.
    """
    if hint.shape != regressed.shape:
        raise ValueError(
            f"hint shape {tuple(hint.shape)} differs from regressor output {tuple(regressed.shape)}"
        )
    diff = (hint.float() - regressed.float()).flatten(1)  # (B, F)
    return 0.5 * diff.pow(2).sum(dim=1).mean()
