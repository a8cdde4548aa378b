"""The command line's garbage-collector settings (``models.collector``): full collections paused
while it starts, everything alive before the first weight loads frozen, and the models themselves
never frozen. Each case runs in its own interpreter (freezing the test process would keep its
objects for good)."""

from __future__ import annotations

import gc
import subprocess
import sys
import textwrap

from crosspatch.models import collector


def _python(code: str, *args: str) -> str:
    done = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *args], capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    return done.stdout


def test_library_use_is_untouched():
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    collector.settle()  # nothing paused: a no-op
    assert gc.get_threshold() == before and gc.get_freeze_count() == frozen


def test_paused_full_collections_resume_with_their_thresholds_and_freeze_what_lived_before():
    out = _python("""
        import gc
        from crosspatch.models import collector
        before = gc.get_threshold()
        collector.pause_full_collections()
        paused = gc.get_threshold()
        collector.pause_full_collections()  # twice: the first thresholds are kept
        collector.settle()
        print(before == gc.get_threshold(), paused[:2] == before[:2], paused[2] > 10**6, gc.get_freeze_count() > 1000)
    """)
    assert out.split() == ["True"] * 4


def test_a_model_loaded_after_settling_is_freed_when_released(tmp_path):
    """A sequential run releases each model: loading settles first, so a model caught in a
    reference cycle is still collected."""
    from crosspatch.testing import save_tiny_pair

    base = save_tiny_pair(tmp_path) / "base"
    out = _python("""
        import gc, sys, weakref
        from crosspatch.models import collector
        from crosspatch.models.loading import load_causal_lm
        from crosspatch.models.options import LoadOptions
        collector.pause_full_collections()
        model = load_causal_lm(sys.argv[1], LoadOptions(dtype="float32", device="cpu"))
        model.cycle = [model]  # only the cyclic collector frees it
        alive = weakref.ref(model)
        del model
        gc.collect()
        print(gc.get_threshold()[2] < 10**6, alive() is None)
    """, str(base))
    assert out.split() == ["True", "True"]
