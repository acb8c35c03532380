"""The built-in architecture families; importing this package registers them."""

from kdcore.contract.families.cnn import CnnSpec
from kdcore.contract.families.mlp import MlpSpec
from kdcore.contract.families.residual import ResNetSpec, WrnSpec

__all__ = ["CnnSpec", "MlpSpec", "ResNetSpec", "WrnSpec"]
