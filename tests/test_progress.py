"""Progress bars tell the truth: each counts the work done while it is open, ends at its total and
not past it, and closes when its work is done (so no bar sits at 100% through other work, showing a
rate of work that happened before it); a step with nothing to count says what it is doing."""
from __future__ import annotations

import pytest

from kedit_teach import evaluate as harness
from kedit_teach import layer_stats
from kedit_teach.editors import ICE

from .conftest import CORPUS
from .test_editors import CASE, OTHER

TEXTS = CORPUS * 8  # enough keys for the tiny model's C (d_k = 128)


class Bars:
    """Stands in for tqdm in one module, and keeps what every bar did, in order."""

    def __init__(self):
        self.events: list[tuple] = []

    def __call__(self, iterable=None, total=None, desc="", disable=False, **kw):
        bars = self

        class Bar:
            def __init__(self):
                self.total = len(iterable) if total is None and iterable is not None else total
                self.n, self.desc = kw.get("initial", 0), desc
                bars.events.append(("open", desc))

            def __iter__(self):
                for x in iterable:
                    yield x
                    self.update(1)
                self.close()

            def update(self, k=1):
                self.n += k
                bars.events.append(("update", desc, k))

            def close(self):
                bars.events.append(("close", desc, self.n, self.total))

            def __enter__(self):
                return self

            def __exit__(self, *exc):
                self.close()
        return Bar()

    def closed(self) -> dict[str, tuple[int, int]]:
        return {e[1]: e[2:] for e in self.events if e[0] == "close"}

    def when(self, kind: str, desc: str) -> int:
        return next(i for i, e in enumerate(self.events) if e[:2] == (kind, desc))


@pytest.fixture
def bars(monkeypatch):
    def patch(module):
        found = Bars()
        monkeypatch.setattr(module, "tqdm", found)
        return found
    return patch


@pytest.mark.parametrize("mode", ["sequential", "batch"])
def test_scoring_has_its_own_bar_after_the_edits_bar_closes(gemma_tiny, bars, mode):
    seen = bars(harness)
    harness.evaluate(ICE(*gemma_tiny), [CASE, OTHER], mode=mode, batch_size=2, fluency_n=1)
    edits, scoring = f"ice [{mode}]: edits", f"ice [{mode}]: scoring"
    closed = seen.closed()
    assert closed[edits] == (2, 2)
    done, total = closed[scoring]
    assert done == total > 2  # every probe scored and generated, and the fluency text
    assert seen.when("close", edits) < seen.when("open", scoring)  # ICE's edits take no time: that bar is done
    assert sum(e[:2] == ("update", scoring) for e in seen.events) > 2  # it moves batch by batch
    assert closed["ice: unedited answers"][0] == closed["ice: unedited answers"][1] > 0


def test_the_scoring_bar_stops_at_its_total_when_rows_run_again(gemma_tiny, bars):
    seen = bars(harness)
    editor = ICE(*gemma_tiny)
    with harness.counted(editor, 3, "rows"):  # RECIPE's until_answer decodes a row again past its answer
        editor.generate(["The capital of France is", "Paris is"], 2)
        editor.generate(["The capital of France is", "Paris is"], 2)
    assert seen.closed()["rows"] == (3, 3)


def test_the_lifelong_curve_scores_under_a_bar_of_its_own(gemma_tiny, bars):
    seen = bars(harness)
    harness.curve(ICE(*gemma_tiny), [CASE, OTHER], checkpoints=[1, 2], batch_size=2)
    closed = seen.closed()
    assert closed["ice lifelong: edits"] == (2, 2)
    assert all(done == total > 0 for done, total in (closed["scoring after 1 edit"], closed["scoring after 2 edits"]))


def test_the_layer_statistics_bar_stops_at_its_total(gemma_tiny, bars):
    seen = bars(layer_stats)
    model, tok = gemma_tiny
    stats = layer_stats.second_moment(model, tok, 1, corpus=TEXTS, n_keys=130, cache=False)
    assert stats.n_keys > 130  # the last batch of texts counts whole...
    (done, total), = seen.closed().values()
    assert done == total == 130  # ...but the bar does not run past its total


def test_the_null_space_step_says_what_it_does_once(gemma_tiny, bars, tmp_path, monkeypatch):
    monkeypatch.setenv("KEDIT_CACHE", str(tmp_path))
    model, tok = gemma_tiny
    seen = bars(layer_stats)
    layer_stats.null_space(model, tok, 1, threshold=1e-2, corpus=TEXTS)
    status = [e[1] for e in seen.events if e[0] == "open" and "null-space projector" in e[1]]
    assert status == ["null-space projector of layer 1 (once, then cached)"]
    assert seen.closed()[status[0]] == (1, 1)
    seen.events.clear()
    layer_stats.null_space(model, tok, 1, threshold=1e-2, corpus=TEXTS)  # cached: nothing to do, nothing said
    assert not seen.events
