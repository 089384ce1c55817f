import os

import pytest
import torch

import tbptt_ext

# CI sets this so that a build that silently fell back to the reference fails.
if os.environ.get("TBPTT_EXT_REQUIRE_COMPILED", "") == "1":
    assert "cpu" in tbptt_ext.compiled_backends(), (
        "TBPTT_EXT_REQUIRE_COMPILED=1 but the compiled CPU kernels are not loaded: "
        f"{tbptt_ext.ops.EXTENSION_ERROR}"
    )

requires_fused_cpu = pytest.mark.skipif(
    "cpu" not in tbptt_ext.compiled_backends(), reason="compiled CPU kernels not available"
)

TOLERANCES = {
    torch.float64: dict(rtol=1e-10, atol=1e-10),
    torch.float32: dict(rtol=1e-4, atol=2e-5),
}


def assert_close(actual, expected, dtype, msg=""):
    torch.testing.assert_close(actual, expected, **TOLERANCES[dtype], msg=lambda m: f"{msg}: {m}")
