"""kdcore's job contract: the one typed language of a job, from the HTTP body to the loop.

Torch-free (the API imports it): architecture specs and their family registry, layer
paths, shapes and cost worked out from a spec, the training config and its stage plan, the
FitNets regressor rule, the bounds every field and JSON text keeps, and the one way a
violation is worded for the user.
"""

from kdcore.contract.bounds import MAX_CLASSES, MAX_INPUT_VALUES, MAX_JSON_DEPTH, load_json
from kdcore.contract.config import (
    AUTO,
    CACHE_ENTRY_MAX_BYTES,
    DistillConfig,
    HintConfig,
    StageName,
    StagePlan,
    epoch_rank,
    epochs_before_stage,
    parse_config,
    plan_stages,
)
from kdcore.contract.cost import ModelCost, model_cost
from kdcore.contract.errors import SpecError, explain_errors, parse_json_model, summarize

# Importing the built-in families registers them.
from kdcore.contract.families import CnnSpec, MlpSpec, ResNetSpec, WrnSpec
from kdcore.contract.hints import HintChoice, choose_hint, resolve_hint
from kdcore.contract.registry import (
    ArchSpec,
    Family,
    Shape,
    Spec,
    arch_json_schema,
    describe_missing_layer,
    get_family,
    layer_paths,
    layer_shapes,
    parse_arch,
    register_family,
    registered_families,
)
from kdcore.contract.regressor import RegressorError, RegressorPlan, check_hint, plan_regressor

__all__ = [
    "AUTO",
    "CACHE_ENTRY_MAX_BYTES",
    "MAX_CLASSES",
    "MAX_INPUT_VALUES",
    "MAX_JSON_DEPTH",
    "ModelCost",
    "ArchSpec",
    "CnnSpec",
    "DistillConfig",
    "Family",
    "HintChoice",
    "HintConfig",
    "MlpSpec",
    "RegressorError",
    "RegressorPlan",
    "ResNetSpec",
    "Shape",
    "Spec",
    "SpecError",
    "StageName",
    "StagePlan",
    "WrnSpec",
    "arch_json_schema",
    "check_hint",
    "choose_hint",
    "describe_missing_layer",
    "epoch_rank",
    "epochs_before_stage",
    "registered_families",
    "resolve_hint",
    "get_family",
    "layer_paths",
    "layer_shapes",
    "load_json",
    "model_cost",
    "parse_arch",
    "parse_config",
    "parse_json_model",
    "plan_regressor",
    "plan_stages",
    "explain_errors",
    "register_family",
    "summarize",
]
