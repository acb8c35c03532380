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
    no_cut = torch.full((16,), -1)
    params = torch.stack([offsets[0], offsets[1], mirror.long(), no_cut, no_cut], 1)  # (B, 5)
    assert torch.equal(out, policy.apply(x, params))
    assert torch.equal(g1.get_state(), g2.get_state())


def test_bank_is_drawn_from_the_seed_alone_and_cycles_through_its_views() -> None:
    policy = ViewPolicy(crop_padding=4, crop=True, flip=True)
    a = ViewBank.draw(policy, 50, 6, seed=3, size=(8, 8))
    b = ViewBank.draw(policy, 50, 6, seed=3, size=(8, 8))
    assert torch.equal(a.params, b.params)
    assert torch.equal(a.start, b.start)
    assert not torch.equal(ViewBank.draw(policy, 50, 6, seed=4, size=(8, 8)).params, a.params)
    assert a.params.shape == (50, 6, 5)
    assert a.params.dtype == torch.int16
    idx = torch.arange(50)
    seen = torch.stack([a.choose(idx, epoch) for epoch in range(1, 7)], 1)  # (N, 6)
    assert all(sorted(row.tolist()) == list(range(6)) for row in seen)  # each view once


def test_bank_view_equals_augmenting_with_its_parameters() -> None:
    x = torch.randn(10, 1, 6, 6)
    policy = ViewPolicy(crop_padding=1, crop=True, flip=True)
    bank = ViewBank.draw(policy, 10, 3, seed=0, size=(6, 6))
    idx, view = torch.tensor([4, 7]), torch.tensor([2, 0])
    out = bank.apply(x[idx], idx, view)
    for j in range(2):
        row, col, flip, _, _ = bank.params[idx[j], view[j]].tolist()
        expect = torch.nn.functional.pad(x[idx[j]], (1, 1, 1, 1))[:, row : row + 6, col : col + 6]
        assert torch.equal(out[j], expect.flip(2) if flip else expect)


def test_without_augmentation_the_bank_holds_the_sample_itself() -> None:
    policy = ViewPolicy.from_augment("none", 4)
    assert not policy.active
    bank = ViewBank.draw(policy, 5, 16, seed=0, size=(4, 4))
    assert bank.views == 1
    x = torch.randn(5, 3, 4, 4)
    assert bank.apply(x, torch.arange(5), torch.zeros(5).long()) is x
    assert not ViewPolicy.from_augment("crop_flip", 4, images=False).active


def test_cutout_zeroes_one_clipped_square_per_view_and_keeps_earlier_draws() -> None:
    """Cutout (DeVries & Taylor 2017): a ``cutout``-sided square at a centre uniform over the
    image, clipped at the border, set to 0 (the mean, inputs being normalized); its draws
    come after the crop's and flip's, so those stay what they were without it."""
    x = torch.randn(64, 2, 9, 9) + 10  # no pixel is 0 before the cutout
    plain = ViewPolicy(crop_padding=2, crop=True, flip=True)
    cut = ViewPolicy(crop_padding=2, crop=True, flip=True, cutout=4)
    p_plain = plain.draw(64, torch.Generator().manual_seed(1), (9, 9))
    p_cut = cut.draw(64, torch.Generator().manual_seed(1), (9, 9))
    assert torch.equal(p_cut[:, :3], p_plain[:, :3])
    out, base = cut.apply(x, p_cut), plain.apply(x, p_plain)
    for j in range(64):
        r0, c0 = p_cut[j, 3].item(), p_cut[j, 4].item()
        assert -2 <= r0 <= 6  # centre in [0, 9), minus half the side
        assert -2 <= c0 <= 6
        rows = slice(max(r0, 0), min(r0 + 4, 9))
        cols = slice(max(c0, 0), min(c0 + 4, 9))
        hole = torch.zeros(9, 9, dtype=torch.bool)
        hole[rows, cols] = True
        assert torch.equal(out[j][:, hole], torch.zeros_like(out[j][:, hole]))
        assert torch.equal(out[j][:, ~hole], base[j][:, ~hole])  # the rest is the plain view
    # a bank with cutout replays exactly those pixels, and is active without crop or flip
    only_cut = ViewPolicy(crop_padding=0, crop=False, flip=False, cutout=3)
    assert only_cut.active
    bank = ViewBank.draw(only_cut, 8, 2, seed=0, size=(9, 9))
    idx, view = torch.arange(8), torch.ones(8).long()
    assert torch.equal(bank.apply(x[:8], idx, view), only_cut.apply(x[:8], bank.params[idx, 1]))
    assert (bank.apply(x[:8], idx, view) == 0).any()
