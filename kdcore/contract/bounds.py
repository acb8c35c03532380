"""The contract's outer bounds: what any spec, config or JSON text may hold at most.

Every number a job carries has a finite range (the spec and config fields say theirs; the
shared ones are here), so that the work done before a refusal, and the model a worker
builds, are bounded by the request's fields, not by their values: a resnet of depth 600,002
or a convolution with 2^70 channels is refused by its field before any layer is listed.
The bounds are generous for real use; what a service accepts within them is its operator's
choice (:mod:`kdcore.contract.cost` and the service's ``KDSERVE_MAX_JOB_*`` settings).

:func:`load_json` is the one way user JSON text becomes Python values: it refuses what JSON
itself does not have (``NaN``, ``Infinity``), and nesting deeper than :data:`MAX_JSON_DEPTH`.
"""

from __future__ import annotations

import json
import re
from itertools import accumulate
from typing import Any

# Nesting of a JSON document: a job body is 5 deep (body → base → student → layers → layer).
MAX_JSON_DEPTH = 32
# Classes of a dataset or a teacher (ImageNet-21k has 21,841); far below 2^31, a database
# Integer's limit.
MAX_CLASSES = 1_000_000
# Values of one input sample: 4 × 4096 × 4096.
MAX_INPUT_VALUES = 1 << 26
# Layers of a cnn stack or hidden layers of an mlp.
MAX_LAYERS = 1_000
# Output channels of a convolution, and features of a linear layer.
MAX_CHANNELS = 16_384
MAX_FEATURES = 1_000_000
# A convolution's kernel, stride and padding; a pooling window's.
MAX_KERNEL = 64
MAX_POOL = 1_024
MAX_PIECES = 16  # maxout pieces per unit
MAX_PATH_LENGTH = 500  # characters of a layer path (FitNets' hint and guided layers)


def load_json(text: str | bytes | bytearray, *, max_depth: int = MAX_JSON_DEPTH) -> Any:
    """``json.loads``, bounded: refuses ``NaN``/``Infinity`` (not JSON, and no float field
    can hold them usefully) and nesting deeper than ``max_depth`` arrays and objects.

    Raises:
        json.JSONDecodeError: not JSON, one of the above, or nested too deeply; its ``msg``
            says which.
    """
    doc = (
        bytes(text).decode(json.detect_encoding(text), "surrogatepass")
        if isinstance(text, bytes | bytearray)
        else text
    )

    def refuse(name: str) -> Any:
        raise json.JSONDecodeError(
            f"{name} is not a JSON number; send a finite number", doc, max(doc.find(name), 0)
        )

    try:
        value = json.loads(doc, parse_constant=refuse)
    except RecursionError:  # deeper than the interpreter's own limit (~1000)
        raise json.JSONDecodeError(_too_deep(max_depth), doc, 0) from None
    if isinstance(value, dict | list) and _deeper_than(doc, max_depth):
        raise json.JSONDecodeError(_too_deep(max_depth), doc, 0)
    return value


def _too_deep(max_depth: int) -> str:
    return f"arrays and objects nested deeper than {max_depth} levels"


# A JSON string (valid JSON: the parser accepted it first), and what is not a bracket.
_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")
_STEP = {"[": 1, "{": 1, "]": -1, "}": -1}


def _deeper_than(doc: str, max_depth: int) -> bool:
    """Whether the JSON text ``doc`` nests more than ``max_depth`` arrays and objects: its
    brackets outside strings, counted at C speed (regular expressions, ``accumulate``), so
    that a 5 MB array of numbers costs as little as a deep one."""
    skeleton = _NOT_BRACKET.sub("", _STRING.sub("", doc))
    return bool(skeleton) and max(accumulate(map(_STEP.__getitem__, skeleton))) > max_depth
