"""Every test belongs to one stage of `make test`: its folder's, else the one its needs ask for."""

from __future__ import annotations

import pytest

from tests.plugins.stages import TESTS_DIR, stage_of


@pytest.mark.parametrize(("path", "markers", "stage"), [
    ("lint/test_code_quality.py", set(), "lint"),
    ("unit/runtime/test_board.py", set(), "unit"),
    ("integration/runtime/test_helpers.py", set(), "integration"),
    ("e2e/test_real_pods.py", {"cluster", "services"}, "e2e"),
    ("chart/test_chart_render.py", set(), "unit"),
    ("bench/test_runtime_bench_smoke.py", {"services"}, "integration"),
    ("chart/test_chart_install.py", {"cluster", "services"}, "e2e"),
])
def test_a_tests_stage_is_its_folder_or_what_it_needs(path: str, markers: set[str],
                                                       stage: str) -> None:
    assert stage_of(TESTS_DIR / path, markers) == stage
