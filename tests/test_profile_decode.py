"""benchmarks/profile_decode.py's idle-time accounting on a hand-made device timeline."""

from __future__ import annotations

import pytest

from raylight.benchmarks.profile_decode import device_timeline


def test_idle_gaps_by_the_ops_around_them() -> None:
    # Two steps: graph kernels, then the LM head, argmax and a copy; a copy engine op overlaps.
    spans = []
    for t0 in (0.0, 100.0):
        spans += [("qkv", t0, t0 + 40), ("attn", t0 + 41, t0 + 60), ("copy_h2d", t0 + 45, t0 + 50),
                  ("lm_head", t0 + 65, t0 + 80), ("argmax", t0 + 83, t0 + 85),
                  ("copy_d2h", t0 + 90, t0 + 91)]  # fmt: skip
    tl = device_timeline(spans, steps=2)
    assert tl["span_ms_per_step"] == pytest.approx(191 / 1e3 / 2)
    # per step 1 (qkv->attn) + 5 (attn->lm_head: the overlapping copy ends earlier) + 3 + 5,
    # and 9 between the steps (copy_d2h -> qkv) once
    assert tl["idle_ms_per_step"] == pytest.approx((2 * 14 + 9) / 1e3 / 2)
    top = {(g["after"], g["before"]): g for g in tl["top_gaps"]}
    assert top[("attn", "lm_head")]["idle_us_per_step"] == pytest.approx(5.0)
    assert top[("copy_d2h", "qkv")]["count_per_step"] == pytest.approx(0.5)
    assert ("copy_h2d", "lm_head") not in top
    assert tl["top_gaps"][0]["after"] in ("copy_d2h", "attn", "argmax")


def test_no_device_ops() -> None:
    assert device_timeline([], steps=3) == {"span_ms_per_step": None, "idle_ms_per_step": None,
                                            "top_gaps": []}
