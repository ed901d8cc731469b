"""Size parsing and byte formatting shared by the benchmarks' command lines."""
import pytest

from hpclm.bench.common import human_bytes, parse_size, parse_sizes
from hpclm.errors import UserError


def test_units_and_ranges():
    sizes = [parse_size(t) for t in ("4", "8K", "16M", "1G", "64KiB", "2kb")]
    assert sizes == [4, 8192, 16 << 20, 1 << 30, 65536, 2048]
    assert parse_sizes("4:64") == [4, 8, 16, 32, 64]
    assert parse_sizes("4,1K,64K:256K") == [4, 1024, 65536, 131072, 262144]     # lists mix sizes and ranges
    assert parse_sizes("3,5") == [3, 5]
    assert human_bytes(4) == "4 B" and human_bytes(1536) == "1.5 KiB" and human_bytes(64 << 20) == "64 MiB"


@pytest.mark.parametrize("text", ["1X", "K", "", ",", "0:64", "-4", "4:2:8", "1.5M"])
def test_bad_sizes_are_user_errors(text):
    with pytest.raises(UserError):
        parse_sizes(text)
