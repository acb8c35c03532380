import math

import pytest
import torch
import torch.nn.functional as F

from kdcore.losses import hint_loss, kd_loss, soft_kl


def test_kd_loss_matches_hand_computation() -> None:
    s = torch.tensor([[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]])
    t = torch.tensor([[2.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    y = torch.tensor([1, 2])
    T, alpha = 2.0, 0.3

    ce = sum(-math.log(math.exp(s[i, y[i]]) / sum(math.exp(v) for v in s[i])) for i in range(2)) / 2
    kl = 0.0
    for i in range(2):
        p = [math.exp(v / T) for v in t[i].tolist()]
        q = [math.exp(v / T) for v in s[i].tolist()]
        p = [v / sum(p) for v in p]
        q = [v / sum(q) for v in q]
        kl += sum(pi * math.log(pi / qi) for pi, qi in zip(p, q, strict=True))
    kl /= 2
    expected = alpha * ce + (1 - alpha) * T * T * kl

    loss, parts = kd_loss(s, t, y, temperature=T, alpha=alpha)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    assert parts["ce"].item() == pytest.approx(ce, rel=1e-6)
    assert parts["kd"].item() == pytest.approx(T * T * kl, rel=1e-6)


def test_kd_loss_alpha_one_is_cross_entropy_and_identical_logits_give_zero_kl() -> None:
    s = torch.randn(4, 5)
    y = torch.randint(0, 5, (4,))
    loss, _ = kd_loss(s, torch.randn(4, 5), y, temperature=3.0, alpha=1.0)
    assert loss.item() == pytest.approx(F.cross_entropy(s, y).item(), rel=1e-6)
    assert soft_kl(s, s, 5.0).item() == pytest.approx(0.0, abs=1e-6)


def test_high_temperature_gradient_approaches_logit_matching() -> None:
    """Hinton et al. §2.1: dC/dz_i ≈ (z_i − v_i)/(N·T²) for zero-mean logits at high T."""
    torch.manual_seed(0)
    n_classes, T = 10, 100.0
    z = torch.randn(1, n_classes, dtype=torch.float64)
    v = torch.randn(1, n_classes, dtype=torch.float64)
    z, v = z - z.mean(), v - v.mean()
    z.requires_grad_(True)
    soft_kl(z, v, T).backward()
    expected = (z.detach() - v) / (n_classes * T * T)
    assert z.grad is not None
    torch.testing.assert_close(z.grad, expected, rtol=1e-2, atol=1e-2 * expected.abs().max().item())

    # The T² factor of kd_loss makes the soft gradient (z − v)/N, independent of T.
    z2 = z.detach().clone().requires_grad_(True)
    loss, _ = kd_loss(z2, v, torch.tensor([0]), temperature=T, alpha=0.0)
    loss.backward()
    assert z2.grad is not None
    matched = (z.detach() - v) / n_classes
    torch.testing.assert_close(z2.grad, matched, rtol=1e-2, atol=1e-2 * matched.abs().max().item())


def test_gradient_is_far_from_logit_matching_at_low_temperature() -> None:
    torch.manual_seed(0)
    z = torch.randn(1, 10, dtype=torch.float64) * 3
    v = torch.randn(1, 10, dtype=torch.float64) * 3
    z, v = (z - z.mean()).requires_grad_(True), v - v.mean()
    soft_kl(z, v, 1.0).backward()
    assert z.grad is not None
    assert not torch.allclose(z.grad, (z.detach() - v) / 10, rtol=0.2)


def test_hint_loss_is_half_squared_l2_averaged_over_batch() -> None:
    u = torch.tensor([[[[1.0, 2.0]]], [[[0.0, 0.0]]]])  # (2, 1, 1, 2)
    r = torch.tensor([[[[0.0, 0.0]]], [[[3.0, 4.0]]]])
    # sample 0: ½(1 + 4) = 2.5; sample 1: ½(9 + 16) = 12.5; mean 7.5
    assert hint_loss(u, r).item() == pytest.approx(7.5)


def test_hint_loss_refuses_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="differs"):
        hint_loss(torch.zeros(2, 3), torch.zeros(2, 4))
