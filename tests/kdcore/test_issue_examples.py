"""The spec and config examples of the engine's issue, exactly as written there."""

import json

import pytest

from kdcore.contract import parse_arch, parse_config
from kdcore.models import build_model

SPECS = {
    "mlp-teacher.json": '{"family": "mlp", "hidden": [1200, 1200], "dropout": 0.2}',
    "mlp-student.json": '{"family": "mlp", "hidden": [800, 800]}',
    "resnet.json": '{"family": "resnet", "depth": 8, "width": 4}',
    "cnn.json": '{"family": "cnn", "layers": [{"type": "conv", "out": 16, "k": 3, "pad": 1, '
    '"name": "c1"}, {"type": "relu"}, {"type": "maxpool", "k": 2}, {"type": "flatten"}, '
    '{"type": "linear", "out": 10}]}',
}
CONFIGS = {
    "scratch.json": '{"method": "scratch", "epochs": 3, "batch_size": 128, "optimizer": "sgd", '
    '"lr": 0.05, "seed": 0}',
    "kd.json": '{"method": "kd", "epochs": 3, "batch_size": 128, "optimizer": "sgd", '
    '"lr": 0.05, "temperature": 4, "alpha": 0.1, "seed": 0}',
    "fitnet.json": '{"method": "fitnet", "epochs": 3, "batch_size": 128, "optimizer": "sgd", '
    '"lr": 0.05, "temperature": 4, "alpha": 0.1, "seed": 0, "hint": {"teacher_layer": "c1", '
    '"student_layer": "c1", "epochs": 2}}',
}


@pytest.mark.parametrize("name", list(SPECS))
@pytest.mark.parametrize("shape", [(3, 32, 32), (1, 28, 28)])
def test_spec_examples_build_for_image_data(name: str, shape: tuple[int, ...]) -> None:
    model = build_model(parse_arch(json.loads(SPECS[name])), shape, 10)
    assert sum(p.numel() for p in model.parameters()) > 0


@pytest.mark.parametrize("name", list(CONFIGS))
def test_config_examples_parse(name: str) -> None:
    cfg = parse_config(CONFIGS[name])
    assert cfg.epochs == 3
    assert cfg.batch_size == 128
