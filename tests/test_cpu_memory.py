"""The CPU backend's memory: the Winograd weight budget (unet_fast/backends/cpu_conv_memory.py),
forms that are really freed, and plans cut to the budget that still match float64."""

from __future__ import annotations

import gc
import math
import weakref

import pytest
import torch

from tests.helpers import make_pair, rel_l2
from unet_fast import winograd
from unet_fast.backends import cpu_conv3x3 as tactics
from unet_fast.backends import cpu_conv_memory as memory
from unet_fast.backends.cpu_onednn import pack

D, W2, W4, OTF = tactics.DIRECT, tactics.WINOGRAD2, tactics.WINOGRAD4, tactics.WINOGRAD4_OTF
WIDE = dict(base_channels=64, depth=2)  # 10 3x3 layers, 9 of them measured at 124x124


@pytest.fixture(autouse=True)
def _defaults(monkeypatch):
    monkeypatch.delenv("UNET_FAST_CPU_CONV", raising=False)
    monkeypatch.delenv("UNET_FAST_CPU_CONV_MEMORY", raising=False)


def _packed(fast, dtype=torch.float32):
    return fast.weight_cache.get(fast, ("cpu", dtype), lambda: pack(fast, dtype))


# --- the budget arithmetic ----------------------------------------------------------------------

def test_budget_env(monkeypatch):
    assert memory.memory_budget() == memory._DEFAULT_BUDGET
    monkeypatch.setenv("UNET_FAST_CPU_CONV_MEMORY", "0.5")
    assert memory.memory_budget() == 0.5
    monkeypatch.setenv("UNET_FAST_CPU_CONV_MEMORY", "inf")
    assert memory.memory_budget() == math.inf
    for bad in ("-1", "lots", "nan"):
        monkeypatch.setenv("UNET_FAST_CPU_CONV_MEMORY", bad)
        with pytest.raises(ValueError, match="UNET_FAST_CPU_CONV_MEMORY must be a number >= 0"):
            memory.memory_budget()


@pytest.mark.parametrize("cin,cout", [(64, 64), (3, 40), (1024, 512), (17, 33)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_form_bytes_are_the_packed_bytes(cin, cout, dtype):
    w, b = torch.randn(cout, cin, 3, 3), torch.randn(cout)
    for tactic, m in ((W4, 4), (W2, 2)):
        packed = winograd.pack(w, b, 0, m, dtype)
        assert memory.form_bytes(tactic, cin, cout, dtype) == \
            packed.weight.nbytes + packed.bias.nbytes
    size = torch.empty((), dtype=dtype).element_size()
    assert memory.form_bytes(D, cin, cout, dtype) == (w.numel() + b.numel()) * size
    if dtype == torch.float32:  # a copy of the taps, where the module's weight cannot be read
        packed = winograd.pack(w, b, 0, 4, dtype, raw=True)
        assert memory.form_bytes(OTF, cin, cout, dtype) == \
            packed.weight.nbytes + packed.bias.nbytes


def test_bad_budget_fails_before_measuring(monkeypatch):
    monkeypatch.setenv("UNET_FAST_CPU_CONV_MEMORY", "half")
    measured = []
    monkeypatch.setattr(tactics, "fastest", lambda *a, **k: measured.append(1))
    _, fast = make_pair(**WIDE)
    with torch.no_grad(), pytest.raises(ValueError, match="UNET_FAST_CPU_CONV_MEMORY"):
        fast(torch.randn(1, 1, 124, 124))
    assert not measured


# three layers: seconds of each candidate and the extra bytes each needs over direct
SECONDS = [{D: 10.0, W2: 8.0, W4: 6.0}, {D: 10.0, W2: 9.0, W4: 5.0}, {D: 4.0, W2: 3.0, W4: 2.0}]
EXTRA = [{D: 0, W2: 10, W4: 40}, {D: 0, W2: 80, W4: 300}, {D: 0, W2: 1, W4: 3}]
FASTEST = [W4, W4, W4]


def test_no_cap_is_the_fastest_plan():
    assert memory.budget_plan(SECONDS, EXTRA, FASTEST, math.inf) == FASTEST


def test_zero_budget_is_direct_where_winograd_costs_memory():
    assert memory.budget_plan(SECONDS, EXTRA, FASTEST, 0) == [D, D, D]


def test_budget_goes_where_time_saved_per_byte_is_largest():
    # per extra byte: layer 2's F(4x4) 2/3, layer 0's F(2x2) 0.2 and F(4x4) 0.1, layer 1's 1/60
    assert memory.budget_plan(SECONDS, EXTRA, FASTEST, 3) == [D, D, W4]
    assert memory.budget_plan(SECONDS, EXTRA, FASTEST, 13) == [W2, D, W4]
    assert memory.budget_plan(SECONDS, EXTRA, FASTEST, 43) == [W4, D, W4]
    assert memory.budget_plan(SECONDS, EXTRA, FASTEST, 343) == FASTEST
    for budget in (3, 13, 43, 100, 342):
        plan = memory.budget_plan(SECONDS, EXTRA, FASTEST, budget)
        assert sum(extra[t] for extra, t in zip(EXTRA, plan, strict=True)) <= budget


def test_budget_keeps_the_5_percent_rule_and_unmeasured_layers():
    seconds = [{D: 10.0, W2: 9.7, W4: 9.6}, {}]  # neither Winograd is 5% faster than direct
    extra = [{D: 0, W2: 1, W4: 3}, {D: 0}]
    assert memory.budget_plan(seconds, extra, [D, D], math.inf) == [D, D]
    # an upgrade never goes past the layer's own choice (F(2x2) chosen: F(4x4) not 5% faster)
    seconds = [{D: 10.0, W2: 8.0, W4: 7.9}]
    assert memory.budget_plan(seconds, [{D: 0, W2: 1, W4: 3}], [W2], math.inf) == [W2]


def test_a_faster_form_that_costs_nothing_is_taken_at_any_budget():
    """F(4x4) on the fly from the module's weight adds no bytes over direct: budget 0 takes it
    (regression: an upgrade had to add bytes, so budget 0 meant direct); F(4x4) still needs
    its bytes."""
    seconds, extra = [{D: 10.0, OTF: 7.0, W4: 5.0}], [{D: 0, OTF: 0, W4: 3}]
    assert memory.budget_plan(seconds, extra, [W4], 0) == [OTF]
    assert memory.budget_plan(seconds, extra, [W4], 3) == [W4]
    assert memory.budget_plan([{D: 10.0, OTF: 9.8}], [{D: 0, OTF: 0}], [D], 0) == [D]


# --- the planner --------------------------------------------------------------------------------

def _clock_favouring(monkeypatch, fast_tactic):
    """A fake clock under which ``fast_tactic`` takes 1 s and the others 5 s."""
    clock = [0.0]
    real_run = tactics.Conv3x3.run

    def run(self, tactic, *a, **k):
        clock[0] += 1.0 if tactic == fast_tactic else 5.0
        return real_run(self, tactic, *a, **k)

    monkeypatch.setattr(tactics.Conv3x3, "run", run)
    monkeypatch.setattr(tactics.time, "perf_counter", lambda: clock[0])


@pytest.mark.parametrize("budget", ["0", "0.3", "1", "inf"])
def test_plan_respects_the_budget_and_matches_float64(monkeypatch, budget):
    """F(4x4) fastest everywhere: the plan's extra bytes stay within the budget, only the
    plan's forms stay packed, and both calls match the float64 reference."""
    monkeypatch.setenv("UNET_FAST_CPU_CONV_MEMORY", budget)
    ref, fast = make_pair(**WIDE)
    _clock_favouring(monkeypatch, W4)
    x = torch.randn(1, 1, 124, 124, dtype=torch.float64)
    with torch.no_grad():
        r = ref(x)
        y1 = fast(x.float())
        y2 = fast(x.float())
    planner = _packed(fast).planner
    (plan,) = planner.plans.values()
    layers = planner.layers
    direct = sum(memory.form_bytes(D, layer.in_channels, layer.out_channels, torch.float32)
                 for layer in layers)
    extra = sum(layer.form_bytes(t) - layer.form_bytes(D) for layer, t in zip(layers, plan,
                                                                               strict=True))
    assert extra <= float(budget) * direct
    if budget == "inf":
        assert plan == [D] + [W4] * 9
    if budget == "0":
        assert plan == [D] * 10
    for layer, tactic in zip(layers, plan, strict=True):
        assert set(layer._forms) == {tactic}
        assert layer.folded is None
    for y in (y1, y2):
        assert rel_l2(y, r) <= 1e-5


def test_forms_the_plan_drops_are_freed_and_the_plan_needs_no_packing_later(monkeypatch):
    monkeypatch.setenv("UNET_FAST_CPU_CONV_MEMORY", "0.3")
    _, fast = make_pair(**WIDE)
    _clock_favouring(monkeypatch, W4)
    made: list[tuple[str, weakref.ref]] = []
    real_pack = winograd.pack

    def recording_pack(*a, **k):
        packed = real_pack(*a, **k)
        if not packed.raw:  # (the on-the-fly form is the module's weight, alive for good)
            made.append((W4 if packed.m == 4 else W2, weakref.ref(packed.weight)))
        return packed

    monkeypatch.setattr(winograd, "pack", recording_pack)
    x = torch.randn(1, 1, 124, 124)
    with torch.no_grad():
        fast(x)
        gc.collect()
        layers = _packed(fast).planner.layers
        kept = {id(layer._forms[t].weight) for layer in layers for t in layer._forms if t != D}
        alive = [ref() for _, ref in made if ref() is not None]
        assert {id(t) for t in alive} == kept  # every other Winograd form is gone
        n_packed = len(made)
        fast(x)
    assert len(made) == n_packed  # the budget's forms were built by the first call


def test_forms_larger_than_the_whole_budget_are_never_built(monkeypatch):
    """At budget 0.3 (2 MB here) the 128- and 256-channel layers' transformed weights (up to
    9.4 MB) could never be kept, so measuring neither builds nor times them; the forms that fit
    still are."""
    monkeypatch.setenv("UNET_FAST_CPU_CONV_MEMORY", "0.3")
    ref, fast = make_pair(**WIDE)
    _clock_favouring(monkeypatch, W4)
    built: list[tuple[int, int, str]] = []
    real_pack = winograd.pack

    def recording_pack(weight, *a, **k):
        packed = real_pack(weight, *a, **k)
        tactic = OTF if packed.raw else W4 if packed.m == 4 else W2
        built.append((packed.in_channels, packed.out_channels, tactic))
        return packed

    monkeypatch.setattr(winograd, "pack", recording_pack)
    x = torch.randn(1, 1, 124, 124, dtype=torch.float64)
    with torch.no_grad():
        assert rel_l2(fast(x.float()), ref(x)) <= 1e-5
    planner = _packed(fast).planner
    budget = 0.3 * planner.direct_bytes()
    for layer in planner.layers[1:]:
        for tactic in (W2, W4):
            fits = layer.form_bytes(tactic) - layer.form_bytes(D) <= budget
            assert ((layer.in_channels, layer.out_channels, tactic) in built) == fits
    assert not all(layer.form_bytes(W4) <= budget for layer in planner.layers[1:])
    assert any(layer.form_bytes(W4) <= budget for layer in planner.layers[1:])


def test_forced_tactic_drops_the_folded_weights(monkeypatch):
    """Regression: with UNET_FAST_CPU_CONV set no plan is made, and the folded weights (as large
    as the model's) were kept for good."""
    monkeypatch.setenv("UNET_FAST_CPU_CONV", "winograd")
    ref, fast = make_pair(**WIDE)
    x = torch.randn(1, 1, 124, 124, dtype=torch.float64)
    with torch.no_grad():
        y = fast(x.float())
    assert all(layer.folded is None for layer in _packed(fast).planner.layers)
    assert rel_l2(y, ref(x)) <= 1e-5


class _Stub:
    """A layer with three candidates whose outputs say which tactic made them."""

    def candidates(self):
        return [D, W2, W4]

    def form(self, tactic, keep):
        return None


def test_fastest_returns_the_chosen_tactics_output_when_it_was_dropped(monkeypatch):
    """Only the best-so-far output is kept while timing; when the best changes to a tactic whose
    output was dropped (here direct's second time makes F(4x4) best), that tactic runs again."""
    times = {D: [100.0, 95.0, 95.0], W2: [94.0, 96.0, 96.0], W4: [90.0, 90.0, 90.0]}
    clock, runs = [0.0], []

    def run(tactic):
        runs.append(tactic)
        n = sum(t == tactic for t in runs) - 1
        clock[0] += times[tactic][min(n, 2)]
        return torch.full((1,), float([D, W2, W4].index(tactic)))

    monkeypatch.setattr(tactics.time, "perf_counter", lambda: clock[0])
    monkeypatch.setattr(tactics, "_ROUNDS", 2)
    seconds: dict[str, float] = {}
    best, out = tactics.fastest(_Stub(), run, seconds=seconds)
    assert best == W4 and out.item() == 2.0
    assert runs == [D, W2, W4, W2, W4, D, W4]  # two rounds, then F(4x4) once more
    assert seconds == {D: 95.0, W2: 94.0, W4: 90.0}


@pytest.mark.parametrize("norm", [None, "batch"])
def test_on_the_fly_form_reads_the_modules_weight_and_costs_no_budget(monkeypatch, norm):
    """F(4x4) on the fly, fastest in every layer, at budget 0: it never costs more than direct,
    so the plan takes it everywhere. Without BatchNorm it is the module's weight itself (only a
    padded bias is added); with BatchNorm a folded copy, as direct's is. Both match float64,
    also after an in-place weight update."""
    monkeypatch.setenv("UNET_FAST_CPU_CONV_MEMORY", "0")
    ref, fast = make_pair(**WIDE, norm=norm)
    _clock_favouring(monkeypatch, OTF)
    x = torch.randn(1, 1, 124, 124, dtype=torch.float64)
    with torch.no_grad():
        assert rel_l2(fast(x.float()), ref(x)) <= 1e-5
        planner = _packed(fast).planner
        (plan,) = planner.plans.values()
        assert plan == [D] + [OTF] * 9
        convs = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d)
                 and m.kernel_size == (3, 3)]
        for layer, conv in zip(planner.layers[1:], convs[1:], strict=True):
            shared = layer._forms[OTF].weight.data_ptr() == conv.weight.data_ptr()
            assert shared == (norm is None)
            assert layer.form_bytes(OTF) <= layer.form_bytes(D) + 4 * 32
            assert (layer.form_bytes(OTF) < conv.weight.nbytes) == (norm is None)
        for p in fast.parameters():
            p.mul_(1.01)
        ref.load_state_dict(fast.state_dict())
        assert rel_l2(fast(x.float()), ref.double()(x)) <= 1e-5


@pytest.mark.parametrize("norm", [None, "batch"])
def test_direct_runs_from_the_modules_own_weight_where_folding_changes_nothing(monkeypatch, norm):
    """Without BatchNorm, in the module's dtype, the direct form is the module's weight itself
    (no copy); with BatchNorm it is a folded, packed copy. Both match float64, also after an
    in-place weight update."""
    monkeypatch.setenv("UNET_FAST_CPU_CONV", "direct")
    ref, fast = make_pair(**WIDE, norm=norm)
    x = torch.randn(1, 1, 124, 124, dtype=torch.float64)
    with torch.no_grad():
        assert rel_l2(fast(x.float()), ref(x)) <= 1e-5
        convs = [m for m in fast.modules() if isinstance(m, torch.nn.Conv2d)
                 and m.kernel_size == (3, 3)]
        layers = _packed(fast).planner.layers
        for layer, conv in zip(layers, convs, strict=True):
            weight = layer._forms[D][0]  # (an opaque oneDNN tensor when packed)
            shared = not weight.is_mkldnn and weight.data_ptr() == conv.weight.data_ptr()
            assert shared == (norm is None)
            assert layer.form_bytes(D) < conv.weight.nbytes if norm is None else \
                layer.form_bytes(D) > conv.weight.nbytes
        for p in fast.parameters():
            p.mul_(1.01)
        ref.load_state_dict(fast.state_dict())
        assert rel_l2(fast(x.float()), ref.double()(x)) <= 1e-5
