"""Folding a frozen teacher's BatchNorm into the layers before it (kdcore.fold)."""

import pytest
import torch
from torch import nn

from kdcore.contract import Spec, parse_arch
from kdcore.fold import fold_batchnorm, hint_source
from kdcore.hooks import FeatureTap
from kdcore.models import build_model
from kdcore.weights import freeze, is_frozen
from tests.kdcore.factories import cnn


def _trained_looking(model: nn.Module) -> nn.Module:
    """Non-trivial BatchNorm statistics, so folding has something to get wrong."""
    g = torch.Generator().manual_seed(0)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            assert m.running_mean is not None
            assert m.running_var is not None
            m.running_mean.copy_(torch.randn(m.num_features, generator=g))
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(m.num_features, generator=g))
            m.bias.data.copy_(torch.randn(m.num_features, generator=g))
    return freeze(model)


@pytest.mark.parametrize(
    "spec", [cnn(8), parse_arch({"family": "resnet", "depth": 8})], ids=["cnn", "resnet"]
)
def test_folded_teacher_gives_the_same_logits_without_batchnorm(spec: Spec) -> None:
    torch.manual_seed(0)
    teacher = _trained_looking(build_model(spec, (3, 16, 16), 5))
    folded = fold_batchnorm(teacher)
    assert folded is not teacher
    assert is_frozen(folded)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in teacher.modules())  # left as it was
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), teacher(x), rtol=1e-4, atol=1e-4)


def test_nothing_to_fold_and_programs_are_returned_as_they_are() -> None:
    plain = freeze(nn.Sequential(nn.Flatten(), nn.Linear(12, 3)))
    assert fold_batchnorm(plain) is plain
    scripted = freeze(torch.jit.script(build_model(cnn(4), (3, 8, 8), 4)))
    assert fold_batchnorm(scripted) is scripted


class _Branchy(nn.Module):
    """Data-dependent control flow: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv, self.bn = nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.bn(self.conv(x)).mean((2, 3))
        return self.conv(x).mean((2, 3))


def test_an_untraceable_teacher_runs_unfolded_with_a_warning() -> None:
    teacher = freeze(_Branchy())
    with pytest.warns(UserWarning, match="could not fold"):
        assert fold_batchnorm(teacher) is teacher


@pytest.mark.parametrize(
    ("path", "folded_source"),
    [("relu1", True), ("pool", True), ("conv1", False), ("bn2", False), ("conv2", False)],
)
def test_hints_come_from_the_folded_teacher_only_where_it_computes_the_same(
    path: str, folded_source: bool
) -> None:
    """A layer a BatchNorm was folded into now outputs the BatchNorm's result, and a
    BatchNorm no longer runs: those hints are read from the teacher as given."""
    torch.manual_seed(0)
    teacher = _trained_looking(build_model(cnn(8), (3, 16, 16), 5))
    folded = fold_batchnorm(teacher)
    source = hint_source(teacher, folded, path)
    assert (source is folded) == folded_source
    x = torch.randn(4, 3, 16, 16)
    with torch.no_grad():
        with FeatureTap(source, path, stop=True) as tap:
            got = tap.run(x)[1]
        with FeatureTap(teacher, path, stop=True) as tap:
            expected = tap.run(x)[1]
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4)
