from __future__ import annotations

import torch

from kdcore.data import ViewBank, ViewPolicy, augment


def test_augment_is_draw_then_apply_with_the_same_draws() -> None:
    """The random path and the bank share the arithmetic; augment draws what it always did."""
    x = torch.randn(16, 3, 8, 8)
    policy = ViewPolicy(crop_padding=2, crop=True, flip=True)
    g1, g2 = torch.Generator().manual_seed(7), torch.Generator().manual_seed(7)
    out = augment(x, crop_padding=2, crop=True, flip=True, generator=g1)
    # the draws augment has always made: offsets (2, B) first, then flips
    offsets = torch.randint(0, 5, (2, 16), generator=g2)
    mirror = torch.rand(16, generator=g2) < 0.5
    params = torch.stack([offsets[0], offsets[1], mirror.long()], 1)  # (B, 3)
    assert torch.equal(out, policy.apply(x, params))
    assert torch.equal(g1.get_state(), g2.get_state())


def test_bank_is_drawn_from_the_seed_alone_and_cycles_through_its_views() -> None:
    policy = ViewPolicy(crop_padding=4, crop=True, flip=True)
    a, b = ViewBank.draw(policy, 50, 6, seed=3), ViewBank.draw(policy, 50, 6, seed=3)
    assert torch.equal(a.params, b.params)
    assert torch.equal(a.start, b.start)
    assert not torch.equal(ViewBank.draw(policy, 50, 6, seed=4).params, a.params)
    assert a.params.shape == (50, 6, 3)
    assert a.params.dtype == torch.int16
    idx = torch.arange(50)
    seen = torch.stack([a.choose(idx, epoch) for epoch in range(1, 7)], 1)  # (N, 6)
    assert all(sorted(row.tolist()) == list(range(6)) for row in seen)  # each view once


def test_bank_view_equals_augmenting_with_its_parameters() -> None:
    x = torch.randn(10, 1, 6, 6)
    policy = ViewPolicy(crop_padding=1, crop=True, flip=True)
    bank = ViewBank.draw(policy, 10, 3, seed=0)
    idx, view = torch.tensor([4, 7]), torch.tensor([2, 0])
    out = bank.apply(x[idx], idx, view)
    for j in range(2):
        row, col, flip = bank.params[idx[j], view[j]].tolist()
        expect = torch.nn.functional.pad(x[idx[j]], (1, 1, 1, 1))[:, row : row + 6, col : col + 6]
        assert torch.equal(out[j], expect.flip(2) if flip else expect)


def test_without_augmentation_the_bank_holds_the_sample_itself() -> None:
    policy = ViewPolicy.from_augment("none", 4)
    assert not policy.active
    bank = ViewBank.draw(policy, 5, 16, seed=0)
    assert bank.views == 1
    x = torch.randn(5, 3, 4, 4)
    assert bank.apply(x, torch.arange(5), torch.zeros(5).long()) is x
    assert not ViewPolicy.from_augment("crop_flip", 4, images=False).active
