"""A family registered from outside kdcore works everywhere at once: it parses, lists its
layers, checks its shapes, builds, shows in the OpenAPI document and is checked at job
submission like a built-in one."""

from __future__ import annotations

from collections import OrderedDict
from typing import Any, Literal

import pytest
import torch
from fastapi.testclient import TestClient
from pydantic import Field
from sqlalchemy.orm import Session, sessionmaker
from torch import nn

from kdcore.contract import (
    Family,
    Shape,
    Spec,
    SpecError,
    layer_paths,
    layer_shapes,
    parse_arch,
    register_family,
)
from kdcore.contract import registry as contract_registry
from kdcore.inspection import inspect_model
from kdcore.models import build_model
from tests.api.factories import Tenancy, create_dataset, create_teacher


class ToySpec(Spec):
    """``conv → act → gap → flat → head``: a 3×3 convolution, global pooling, a linear head."""

    family: Literal["toynet"]
    channels: int = Field(default=4, gt=0)


def toy_shapes(spec: ToySpec, input_shape: Shape, num_classes: int) -> dict[str, Shape]:
    if len(input_shape) != 3:
        raise SpecError(f"toynet needs image input (C, H, W), got {input_shape}")
    _, h, w = input_shape
    c = spec.channels
    return {
        "conv": (c, h, w),
        "act": (c, h, w),
        "gap": (c, 1, 1),
        "flat": (c,),
        "head": (num_classes,),
    }


def build_toy(spec: ToySpec, input_shape: Shape, num_classes: int) -> nn.Module:
    c = spec.channels
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(input_shape[0], c, 3, padding=1),
            act=nn.ReLU(),
            gap=nn.AdaptiveAvgPool2d(1),
            flat=nn.Flatten(),
            head=nn.Linear(c, num_classes),
        )
    )


@pytest.fixture
def toynet(monkeypatch: pytest.MonkeyPatch) -> Family:
    # A private copy of the registry, so the toy family does not outlive this test.
    monkeypatch.setattr(contract_registry, "_FAMILIES", dict(contract_registry._FAMILIES))
    return register_family(Family("toynet", spec=ToySpec, shapes=toy_shapes, build=build_toy))


def test_a_registered_family_parses_lists_checks_and_builds(toynet: Family) -> None:
    spec = parse_arch('{"family": "toynet", "channels": 6}')
    assert isinstance(spec, ToySpec)
    assert layer_paths(spec, (1, 8, 8), 4) == ["conv", "act", "gap", "flat", "head"]
    with pytest.raises(SpecError, match="needs image input"):
        layer_shapes(spec, (64,), 4)
    with pytest.raises(SpecError, match="channels"):
        parse_arch({"family": "toynet", "channels": 0})

    model = build_model(spec, (1, 8, 8), 4)
    assert model(torch.zeros(2, 1, 8, 8)).shape == (2, 4)
    built = {layer.path: tuple(layer.shape) for layer in inspect_model(model, (1, 8, 8)).layers}
    assert built == layer_shapes(spec, (1, 8, 8), 4)


def test_a_registered_family_is_documented_and_checked_by_the_api(
    toynet: Family, client: TestClient, alice: Tenancy, sessions: sessionmaker[Session]
) -> None:
    student = client.get("/openapi.json").json()["components"]["schemas"]["JobCreate"]
    mapping = student["properties"]["student"]["discriminator"]["mapping"]
    assert set(mapping) == {"cnn", "mlp", "resnet", "wrn", "toynet"}

    with sessions() as s, s.begin():
        ids = {
            "dataset_id": str(create_dataset(s, alice.id).id),  # (1, 8, 8), 4 classes
            "teacher_id": str(create_teacher(s, alice.id).id),  # mlp: fc1, relu1 (16,), head
        }

    def submit(student_layer: str, **student: Any) -> Any:
        config = {
            "method": "fitnet",
            "hint": {"teacher_layer": "relu1", "student_layer": student_layer},
        }
        body = {**ids, "student": {"family": "toynet", **student}, "config": config}
        return client.post("/v1/jobs", headers=alice.headers, json=body)

    missing = submit("flatt")
    assert missing.status_code == 422, missing.text
    assert (
        "config.hint.student_layer: no layer 'flatt'; nearest valid paths: flat"
        in (missing.json()["detail"])
    )
    image_on_vector = submit("act")
    assert image_on_vector.status_code == 422
    assert (
        "cannot regress guided shape (4, 8, 8) onto hint shape (16,)"
        in (image_on_vector.json()["detail"])
    )
    bad_field = submit("flat", channels=-1)
    assert bad_field.status_code == 422
    assert "student.channels" in bad_field.json()["detail"]

    accepted = submit("flat", channels=8)
    assert accepted.status_code == 202, accepted.text
    assert accepted.json()["student"] == {"family": "toynet", "channels": 8}
