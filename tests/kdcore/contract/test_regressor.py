import pytest
import torch
from torch import nn

from kdcore.regressor import RegressorError, build_regressor


@pytest.mark.parametrize(
    ("guided", "hint"),
    [((32, 16, 16), (64, 8, 8)), ((16, 11, 9), (48, 4, 4)), ((8, 7, 7), (8, 7, 7))],
)
def test_conv_regressor_kernel_and_parameter_count(
    guided: tuple[int, int, int], hint: tuple[int, int, int]
) -> None:
    reg = build_regressor(guided, hint)
    assert isinstance(reg, nn.Conv2d)
    o_g, *n_g = guided
    o_h, *n_h = hint
    k1, k2 = n_g[0] - n_h[0] + 1, n_g[1] - n_h[1] + 1
    assert reg.kernel_size == (k1, k2)
    assert sum(p.numel() for p in reg.parameters()) == k1 * k2 * o_h * o_g + o_h
    assert reg(torch.zeros(2, *guided)).shape == (2, *hint)


def test_same_size_maps_get_a_1x1_conv() -> None:
    reg = build_regressor((16, 8, 8), (64, 8, 8))
    assert isinstance(reg, nn.Conv2d)
    assert reg.kernel_size == (1, 1)


def test_smaller_guided_map_uses_transposed_conv_with_mirrored_kernel() -> None:
    reg = build_regressor((16, 4, 4), (32, 8, 8))
    assert isinstance(reg, nn.ConvTranspose2d)
    assert reg.kernel_size == (5, 5)
    assert sum(p.numel() for p in reg.parameters()) == 5 * 5 * 32 * 16 + 32
    assert reg(torch.zeros(2, 16, 4, 4)).shape == (2, 32, 8, 8)


def test_vector_layers_get_a_linear_regressor() -> None:
    reg = build_regressor((800,), (1200,))
    assert isinstance(reg, nn.Linear)
    assert reg(torch.zeros(3, 800)).shape == (3, 1200)


@pytest.mark.parametrize(
    ("guided", "hint"), [((16, 8, 4), (16, 4, 8)), ((128,), (16, 4, 4)), ((16, 4, 4), (64,))]
)
def test_incompatible_shapes_are_refused_with_a_reason(
    guided: tuple[int, ...], hint: tuple[int, ...]
) -> None:
    with pytest.raises(RegressorError, match="pick"):
        build_regressor(guided, hint)
