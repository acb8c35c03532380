"""Every request is bounded before it costs anything (issue 11): the request parsers refuse
deep nesting, non-finite numbers and out-of-range integers with a 422; every numeric field of
the job contract has a finite range that the OpenAPI document states; a job's cost
(parameters, MACs, activations, samples × epochs) is checked against the operator's limits
at submission; a job asking for a GPU the fleet lacks is refused; the FitNets near-name
search is cheap. Each refusal is a problem+json naming what to change, and leaves no row,
no stored object and no queued message."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
import redis
from fastapi.testclient import TestClient
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from api.app import create_app
from kdcore.contract import layer_shapes, model_cost, parse_arch
from store.models import Blob, Job, Sweep, Teacher
from store.settings import Settings
from tests.api.conftest import REDIS_URL
from tests.api.factories import Tenancy, create_dataset, create_teacher
from tests.api.test_bad_input import assert_problem, stored_files

RAW = "application/octet-stream"
MLP = {"family": "mlp", "hidden": [8]}
DEEP = "[" * 5_000 + "]" * 5_000  # past the interpreter's recursion limit; fits in a URL
DEEPISH = "[" * 40 + "]" * 40  # parses, but past the 32 levels allowed


def count(sessions: sessionmaker[Session], model: type[Any]) -> int:
    with sessions() as s:
        return int(s.scalar(select(func.count()).select_from(model)) or 0)


def queued(settings: Settings) -> int:
    return int(redis.Redis.from_url(REDIS_URL).llen(settings.queue))


def assert_nothing_kept(settings: Settings, sessions: sessionmaker[Session]) -> None:
    assert count(sessions, Job) == count(sessions, Sweep) == 0
    assert count(sessions, Teacher) == count(sessions, Blob) == 0
    assert stored_files(settings) == []
    assert queued(settings) == 0


# -- the request parsers ----------------------------------------------------------------------

TEACHER_FIELDS = {"arch": json.dumps(MLP), "input_shape": "1,8,8", "num_classes": "4"}
BAD_FIELDS = [
    ("input_shape", DEEP, "input_shape must be 1 to 4 positive integers"),
    ("input_shape", DEEPISH, "input_shape must be 1 to 4 positive integers"),
    ("input_shape", "[4096, 4096, 4096]", "more than the 67,108,864 values per sample"),
    ("input_shape", "1,2,3,4,5,6,7,8,9" * 1000, "input_shape must be 1 to 4 positive integers"),
    ("arch", '{"family": "mlp", "hidden": ' + DEEP + "}", "nested deeper than 32 levels"),
    ("arch", '{"family": "mlp", "hidden": ' + DEEPISH + "}", "nested deeper than 32 levels"),
    ("arch", '{"family": "mlp", "hidden": [8], "dropout": NaN}', "NaN is not a JSON number"),
    ("arch", '{"family": "mlp", "hidden": [Infinity]}', "Infinity is not a JSON number"),
    ("arch", '{"family": "resnet", "depth": 600002}', "less than or equal to 1202"),
    ("arch", '{"family": "cnn", "layers": [{"type": "conv", "out": 2, "k": 9}, {"type": "flatten"}'
     ', {"type": "linear"}]}', "arch: layer 0 ('0', conv) cannot take input shape (1, 8, 8)"),
    ("num_classes", str(2**63), "num_classes must be an integer from 2 to 1,000,000"),
    ("num_classes", str(2**31), "num_classes must be an integer from 2 to 1,000,000"),
    ("num_classes", "9" * 5000, "num_classes must be an integer from 2 to 1,000,000"),
    ("num_classes", "1", "num_classes must be an integer from 2 to 1,000,000"),
]  # fmt: skip


@pytest.mark.parametrize(("field", "value", "needle"), BAD_FIELDS, ids=lambda v: str(v)[:20])
@pytest.mark.parametrize("form", ["multipart", "query"])
def test_bad_teacher_upload_fields_are_422_and_store_nothing(
    client: TestClient,
    alice: Tenancy,
    settings: Settings,
    sessions: sessionmaker[Session],
    form: str,
    field: str,
    value: str,
    needle: str,
) -> None:
    fields = {**TEACHER_FIELDS, field: value}
    if form == "multipart":
        r = client.post(
            "/v1/teachers",
            headers=alice.headers,
            data=fields,
            files={"file": ("t.safetensors", b"weights")},
        )
    else:
        r = client.post(
            "/v1/teachers",
            params=fields,
            content=b"weights",
            headers={**alice.headers, "content-type": RAW},
        )
    body = assert_problem(r, 422, needle)
    assert body["code"] == "invalid"
    assert_nothing_kept(settings, sessions)


@pytest.fixture
def ready(sessions: sessionmaker[Session], alice: Tenancy) -> dict[str, str]:
    with sessions() as s, s.begin():
        return {
            "dataset_id": str(create_dataset(s, alice.id).id),  # 400 samples of 1x8x8, 4 classes
            "teacher_id": str(create_teacher(s, alice.id).id),  # an mlp
        }


def _post_json(client: TestClient, who: Tenancy, path: str, text: str) -> Any:
    return client.post(
        path, content=text.encode(), headers={**who.headers, "content-type": "application/json"}
    )


def _job_text(ready: dict[str, str], config: str) -> str:
    return (
        f'{{"dataset_id": "{ready["dataset_id"]}", "student": {{"family": "mlp", "hidden": [8]}}, '
        f'"config": {config}}}'
    )


JSON_BODIES = [
    ("deep", '{"method": "scratch", "milestones": ' + DEEP + "}", "nested deeper than 32 levels"),
    ("deepish", '{"method": "scratch", "x": ' + DEEPISH + "}", "nested deeper than 32 levels"),
    ("infinity", '{"method": "scratch", "weight_decay": Infinity}', "Infinity is not a JSON"),
    ("nan", '{"method": "scratch", "lr": NaN}', "NaN is not a JSON number"),
    ("minus-infinity", '{"method": "scratch", "momentum": -Infinity}', "-Infinity is not a JSON"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("config", "needle"), [c[1:] for c in JSON_BODIES], ids=[c[0] for c in JSON_BODIES]
)
def test_deep_or_non_finite_json_bodies_are_422_and_queue_nothing(
    client: TestClient,
    alice: Tenancy,
    ready: dict[str, str],
    settings: Settings,
    sessions: sessionmaker[Session],
    config: str,
    needle: str,
) -> None:
    for path, text in (
        ("/v1/jobs", _job_text(ready, config)),
        ("/v1/sweeps", f'{{"base": {_job_text(ready, config)}, "grid": {{"seed": [1, 2]}}}}'),
    ):
        body = assert_problem(_post_json(client, alice, path, text), 422, needle)
        assert body["code"] == "invalid"
    # promoting a job reads its own small body, with pydantic's bounded parser
    for text in (f'{{"from_job": {DEEP}}}', '{"from_job": NaN}'):
        assert_problem(_post_json(client, alice, "/v1/teachers", text), 422, "from_job")
    assert count(sessions, Job) == count(sessions, Sweep) == 0
    assert count(sessions, Teacher) == 1  # the one `ready` made
    assert queued(settings) == 0
    # the control: the same body with a finite value, shallow, is accepted and queued
    accepted = _post_json(client, alice, "/v1/jobs", _job_text(ready, '{"method": "scratch"}'))
    assert accepted.status_code == 202, accepted.text
    assert queued(settings) == 1


# -- every numeric field has a finite range ------------------------------------------------------

HEAD: list[dict[str, Any]] = [{"type": "flatten"}, {"type": "linear"}]


def _conv(**fields: Any) -> dict[str, Any]:
    return {"family": "cnn", "layers": [{"type": "conv", **fields}, *HEAD]}


OUT_OF_RANGE: list[tuple[str, dict[str, Any], str]] = [
    ("weight_decay", {"config": {"method": "scratch", "weight_decay": 1e308}},
     "config.weight_decay: Input should be less than or equal to 1"),
    ("milestones", {"config": {"method": "scratch", "milestones": [0.5] * 100_000}},
     "config.milestones: List should have at most 100 items"),
    ("seed", {"config": {"method": "scratch", "seed": 2**64}}, "config.seed"),
    ("epochs", {"config": {"method": "scratch", "epochs": 2**70}}, "config.epochs"),
    ("teacher_views", {"config": {"method": "scratch", "teacher_views": 10**9}},
     "config.teacher_views"),
    ("hint-path", {"config": {"method": "fitnet", "hint": {"teacher_layer": "x" * 501,
     "student_layer": "fc1"}}}, "config.hint.teacher_layer"),
    ("resnet-depth", {"student": {"family": "resnet", "depth": 600_002}},
     "student.depth: Input should be less than or equal to 1202"),
    ("resnet-width", {"student": {"family": "resnet", "depth": 8, "width": 10**6}},
     "student.width"),
    ("wrn-depth", {"student": {"family": "wrn", "depth": 6 * 10**6 + 4}}, "student.depth"),
    ("conv-out", {"student": _conv(out=2**70)}, "student.layers.0.conv.out"),
    ("conv-kernel", {"student": _conv(out=2, k=10**6)}, "student.layers.0.conv.k"),
    ("conv-stride", {"student": _conv(out=2, stride=2**40)}, "student.layers.0.conv.stride"),
    ("layers", {"student": {"family": "cnn", "layers": [{"type": "relu"}] * 1001 + HEAD}},
     "student.layers: List should have at most 1000 items"),
    ("mlp-width", {"student": {"family": "mlp", "hidden": [2**63]}}, "student.hidden.0"),
    ("maxout-pieces", {"student": {"family": "cnn", "layers": [{"type": "flatten"},
     {"type": "maxout_linear", "pieces": 10**9}]}}, "student.layers.1.maxout_linear.pieces"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("change", "needle"), [c[1:] for c in OUT_OF_RANGE], ids=[c[0] for c in OUT_OF_RANGE]
)
def test_out_of_range_fields_are_422_at_once_and_queue_nothing(
    client: TestClient,
    alice: Tenancy,
    ready: dict[str, str],
    settings: Settings,
    sessions: sessionmaker[Session],
    change: dict[str, Any],
    needle: str,
) -> None:
    body: dict[str, Any] = {"dataset_id": ready["dataset_id"], "student": MLP}
    body |= {"config": {"method": "scratch"}} | change
    if body["config"]["method"] != "scratch":
        body["teacher_id"] = ready["teacher_id"]
    content = json.dumps(body).encode()
    started = time.monotonic()
    r = client.post(
        "/v1/jobs", headers={**alice.headers, "content-type": "application/json"}, content=content
    )
    assert time.monotonic() - started < 5  # 100,000 milestones (0.5 MB) included
    assert_problem(r, 422, needle)
    assert count(sessions, Job) == 0
    assert queued(settings) == 0


def test_the_openapi_document_states_the_ranges(client: TestClient) -> None:
    schemas = client.get("/openapi.json").json()["components"]["schemas"]
    config = schemas["DistillConfig"]["properties"]
    assert config["weight_decay"]["maximum"] == 1
    assert config["milestones"]["maxItems"] == 100
    assert config["seed"]["maximum"] == 2**32 - 1
    assert config["epochs"]["maximum"] == 10_000
    assert schemas["ResNetSpec"]["properties"]["depth"]["maximum"] == 1202
    assert schemas["WrnSpec"]["properties"]["width"]["maximum"] == 64
    assert schemas["ConvLayer"]["properties"]["out"]["maximum"] == 16_384
    assert schemas["CnnSpec"]["properties"]["layers"]["maxItems"] == 1000
    # every integer and number of the job contract has an upper bound, every list a length
    contract = ["DistillConfig", "HintConfig", "ResNetSpec", "WrnSpec", "MlpSpec", "CnnSpec"]
    contract += [n for n in schemas if n.endswith("Layer")]
    for name in contract:
        for field, prop in schemas[name]["properties"].items():
            for option in [prop, *prop.get("anyOf", [])]:
                for value in (option, option.get("items", {})):
                    if value.get("type") in ("integer", "number"):
                        assert {"maximum", "exclusiveMaximum"} & set(value), (name, field)
                if option.get("type") == "array":
                    assert "maxItems" in option, (name, field)


def test_a_dataset_with_too_many_classes_is_refused_at_submission(
    client: TestClient, alice: Tenancy, settings: Settings, sessions: sessionmaker[Session]
) -> None:
    with sessions() as s, s.begin():
        many = create_dataset(s, alice.id, input_shape=[8], classes=list(range(1_000_001))).id
    r = client.post(
        "/v1/jobs",
        headers=alice.headers,
        json={"dataset_id": str(many), "student": MLP, "config": {"method": "scratch"}},
    )
    assert_problem(r, 422, "1,000,001 classes is more than the 1,000,000 supported")
    assert count(sessions, Job) == 0
    assert queued(settings) == 0


# -- the cost model against the operator's limits --------------------------------------------


def _client(settings: Settings, **update: Any) -> TestClient:
    return TestClient(create_app(settings.model_copy(update=update)))


# An mlp on the factory's dataset (1x8x8, 4 classes, 400 samples: 360 trained on):
# hidden [64]: 64·64+64 + 64·4+4 = 4,420 parameters, 64·64 + 64·4 = 4,352 MACs,
# 64 + 64 + 64 + 4 = 196 activation values per sample.
WIDE = {"family": "mlp", "hidden": [64]}

OVER_LIMITS: list[tuple[str, dict[str, Any], dict[str, Any], dict[str, Any], str]] = [
    ("params", {"max_job_params": 4_419}, {"student": WIDE}, {"student": MLP},
     "student: the student has 4,420 parameters (17.3 KiB as float32), over this service's "
     "limit of 4,419 (KDSERVE_MAX_JOB_PARAMS); use a smaller student"),
    ("teacher-params", {"max_job_params": 4_419}, {"teacher": 10**6}, {"teacher": 4_419},
     "teacher_id: the teacher has 1,000,000 parameters (3.8 MiB as float32), over this "
     "service's limit of 4,419 (KDSERVE_MAX_JOB_PARAMS); use another teacher"),
    ("macs", {"max_job_macs": 4_351}, {"student": WIDE}, {"student": MLP},
     "student: the student's forward pass takes 4,352 multiply-accumulates per sample, over "
     "this service's limit of 4,351 (KDSERVE_MAX_JOB_MACS)"),
    ("activations", {"max_job_activation_bytes": 196 * 4 * 128 - 1}, {"student": WIDE},
     {"student": WIDE, "config": {"method": "kd", "batch_size": 127}},
     "student: one batch of 128 keeps about 98.0 KiB of activations (196 values per sample, as "
     "float32), over this service's limit of 100,351 (KDSERVE_MAX_JOB_ACTIVATION_BYTES); "
     "lower config.batch_size, or use a smaller student"),
    ("sample-epochs", {"max_job_sample_epochs": 360 * 25 - 1},
     {"config": {"method": "fitnet", "epochs": 10, "baseline": True, "hint": {"epochs": 5}}},
     {"config": {"method": "fitnet", "epochs": 10, "baseline": True, "hint": {"epochs": 4}}},
     "config.epochs: 25 epochs (every stage and the baseline) over 360 training samples are "
     "9,000 sample-epochs, over this service's limit of 8,999 (KDSERVE_MAX_JOB_SAMPLE_EPOCHS)"),
]  # fmt: skip


@pytest.mark.parametrize(
    ("limit", "over", "within", "needle"),
    [c[1:] for c in OVER_LIMITS],
    ids=[c[0] for c in OVER_LIMITS],
)
def test_a_job_over_a_cost_limit_is_422_naming_it_and_queues_nothing(
    settings: Settings,
    sessions: sessionmaker[Session],
    alice: Tenancy,
    limit: dict[str, int],
    over: dict[str, Any],
    within: dict[str, Any],
    needle: str,
) -> None:
    def body(change: dict[str, Any]) -> dict[str, Any]:
        with sessions() as s, s.begin():
            dataset = create_dataset(s, alice.id)
            teacher = create_teacher(s, alice.id, params=change.pop("teacher", 100))
        return {
            "dataset_id": str(dataset.id),
            "teacher_id": str(teacher.id),
            "student": MLP,
            "config": {"method": "kd"},
        } | change

    with _client(settings, **limit) as client:
        r = client.post("/v1/jobs", headers=alice.headers, json=body(dict(over)))
        problem = assert_problem(r, 422, needle)
        assert problem["code"] == "over_limit"
        assert count(sessions, Job) == 0
        assert queued(settings) == 0
        # the same limit takes a job just within it
        r = client.post("/v1/jobs", headers=alice.headers, json=body(dict(within)))
        assert r.status_code == 202, r.text
        assert queued(settings) == 1


def test_a_teacher_upload_whose_arch_is_over_a_limit_is_422_and_stores_nothing(
    settings: Settings, sessions: sessionmaker[Session], alice: Tenancy
) -> None:
    fields = {**TEACHER_FIELDS, "arch": json.dumps(WIDE)}
    with _client(settings, max_job_params=4_419) as client:
        r = client.post(
            "/v1/teachers",
            headers=alice.headers,
            data=fields,
            files={"file": ("t.safetensors", b"weights")},
        )
        problem = assert_problem(r, 422, "arch: the teacher has 4,420 parameters", "a smaller")
        assert problem["code"] == "over_limit"
        assert_nothing_kept(settings, sessions)
        fields["arch"] = json.dumps(MLP)  # 556 parameters
        r = client.post(
            "/v1/teachers",
            headers=alice.headers,
            data=fields,
            files={"file": ("t.safetensors", b"weights")},
        )
        assert r.status_code == 201, r.text


def test_a_sweep_point_over_a_limit_is_named_by_its_path_and_creates_nothing(
    settings: Settings, sessions: sessionmaker[Session], alice: Tenancy, ready: dict[str, str]
) -> None:
    base = {"dataset_id": ready["dataset_id"], "student": WIDE, "config": {"method": "scratch"}}
    with _client(settings, max_job_params=1_000) as client:
        r = client.post(
            "/v1/sweeps", headers=alice.headers, json={"base": base, "grid": {"seed": [0, 1]}}
        )
    assert_problem(r, 422, "base.student: the student has 4,420 parameters")
    assert count(sessions, Job) == count(sessions, Sweep) == 0
    assert queued(settings) == 0


def test_cuda_on_a_fleet_without_gpus_is_refused_at_submission(
    settings: Settings, sessions: sessionmaker[Session], alice: Tenancy, ready: dict[str, str]
) -> None:
    body = {"dataset_id": ready["dataset_id"], "student": MLP}
    with _client(settings, cuda_workers=False) as client:
        r = client.post(
            "/v1/jobs",
            headers=alice.headers,
            json=body | {"config": {"method": "scratch", "device": "cuda"}},
        )
        assert_problem(
            r,
            422,
            'config.device: "cuda", but this service\'s workers have no CUDA',
            "KDSERVE_CUDA_WORKERS",
            '"auto" or "cpu"',
        )
        assert count(sessions, Job) == 0
        assert queued(settings) == 0
        for device in ("auto", "cpu"):
            config = {"method": "scratch", "device": device}
            assert (
                client.post(
                    "/v1/jobs", headers=alice.headers, json=body | {"config": config}
                ).status_code
                == 202
            )
    with _client(settings) as client:  # the default: the workers have a GPU
        config = {"method": "scratch", "device": "cuda"}
        assert (
            client.post(
                "/v1/jobs", headers=alice.headers, json=body | {"config": config}
            ).status_code
            == 202
        )


# -- CIFAR-sized jobs under the default limits, and the bounded hint search ---------------------

CIFAR = (3, 32, 32)
WRN_16_2 = parse_arch({"family": "wrn", "depth": 16, "width": 2})


@pytest.fixture
def cifar(sessions: sessionmaker[Session], alice: Tenancy) -> dict[str, str]:
    """CIFAR-10's shape and size, and a validated WRN-16-2 teacher as its validation records it."""
    cost = model_cost(WRN_16_2, CIFAR, 10)
    layers = [{"path": p, "shape": list(s)} for p, s in layer_shapes(WRN_16_2, CIFAR, 10).items()]
    with sessions() as s, s.begin():
        dataset = create_dataset(
            s,
            alice.id,
            samples=50_000,
            input_shape=list(CIFAR),
            classes=[str(i) for i in range(10)],
        )
        teacher = create_teacher(
            s,
            alice.id,
            arch=WRN_16_2.model_dump(mode="json"),
            input_shape=list(CIFAR),
            num_classes=10,
            params=cost.params,
            macs=cost.macs,
            layers=layers,
        )
    return {"dataset_id": str(dataset.id), "teacher_id": str(teacher.id)}


@pytest.mark.parametrize("depth", [8, 20, 32])
def test_the_default_limits_take_a_cifar10_fitnet_job_of_80_epochs(
    client: TestClient, alice: Tenancy, cifar: dict[str, str], depth: int
) -> None:
    config = {"method": "fitnet", "epochs": 80, "baseline": True, "augment": "crop_flip"}
    student = {"family": "resnet", "depth": depth}
    r = client.post(
        "/v1/jobs", headers=alice.headers, json=cifar | {"student": student, "config": config}
    )
    assert r.status_code == 202, r.text


def test_an_unknown_guided_layer_of_the_deepest_student_is_named_quickly(
    client: TestClient,
    alice: Tenancy,
    cifar: dict[str, str],
    settings: Settings,
    sessions: sessionmaker[Session],
) -> None:
    """Issue 11's probe, at the deepest resnet the field allows (4,813 layer paths); past it
    the depth is refused by its field (test_out_of_range_fields_are_422_at_once...)."""
    hint = {"teacher_layer": "block1.0", "student_layer": "layer9.0.conv"}
    body = cifar | {
        "student": {"family": "resnet", "depth": 1202},
        "config": {"method": "fitnet", "hint": hint},
    }
    started = time.monotonic()
    r = client.post("/v1/jobs", headers=alice.headers, json=body)
    elapsed = time.monotonic() - started
    assert_problem(
        r,
        422,
        "config.hint.student_layer: no layer 'layer9.0.conv'; nearest valid paths: layer1.0.conv1",
        "(4813 in all)",
    )
    assert elapsed < 3, (
        elapsed
    )  # ~0.1 s; the unbounded search took 0.4 s here, 36 s at depth 600,002
    assert count(sessions, Job) == 0
    assert queued(settings) == 0
