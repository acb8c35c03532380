"""Small pieces of api.kit, without a server."""

import pytest

from api.kit.errors import Invalid
from api.kit.schemas import parse_shape


@pytest.mark.parametrize("text", ["3,32,32", "3x32x32", "[3, 32, 32]", " 3, 32 ,32"])
def test_shapes_parse(text: str) -> None:
    assert parse_shape(text) == [3, 32, 32]


@pytest.mark.parametrize("text", ["", "3,x", "3,,4", "0,3", "-1", "1,2,3,4,5", "[3, true]"])
def test_bad_shapes_are_refused(text: str) -> None:
    with pytest.raises(Invalid, match="positive integers"):
        parse_shape(text)
