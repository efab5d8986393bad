"""The packed-weight cache under threads: inference racing with weight updates never leaves a
pack that is staler than the weights it was made from.

Every test runs the real :meth:`WeightCache.get` through ``model(x)``; the only thing patched is
the BatchNorm fold inside the CPU backend's ``pack``, made slower (or made to wait for the writer)
so that packing and updating overlap on every trial instead of by luck. The oracle is a float64
``reference.UNet`` loaded with the fast model's final weights.
"""

from __future__ import annotations

import copy
import pickle
import threading
import time

import pytest
import torch

import unet_fast
from unet_fast import packing, reference

from .helpers import make_pair, rel_l2

KW = {"base_channels": 4, "depth": 2, "norm": "batch"}
X = (1, 1, 60, 60)
TRIALS = 8


def _final_error(fast: unet_fast.UNet, x: torch.Tensor) -> float:
    """How far ``fast(x)`` is from the float64 reference holding ``fast``'s current weights."""
    ref = reference.UNet(**KW).double().eval()
    ref.load_state_dict(fast.state_dict())
    with torch.no_grad():
        return rel_l2(fast(x), ref(x.double()))


def _other_weights(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    ref, _ = make_pair(**KW)
    return {k: v.float() for k, v in ref.state_dict().items()}


def test_update_while_packing_is_not_cached_as_current(monkeypatch):
    """Deterministic interleaving: the writer runs load_state_dict after the first block was
    packed and before the others are. Before the fix the half-old pack was stored under the new
    weights' fingerprint and used for ever after."""
    _, fast = make_pair(**KW)
    new = _other_weights(1)
    x = torch.randn(X)
    mid_pack, written = threading.Event(), threading.Event()
    real_fold, calls = packing.fold_double_conv, []

    def fold_then_wait_once(block, dtype):
        calls.append(block)
        if len(calls) == 2:  # the first block is packed with the old weights
            mid_pack.set()
            assert written.wait(10)
        return real_fold(block, dtype)

    monkeypatch.setattr(packing, "fold_double_conv", fold_then_wait_once)

    def writer():
        assert mid_pack.wait(10)
        fast.load_state_dict(new)
        written.set()

    t = threading.Thread(target=writer)
    t.start()
    with torch.inference_mode():
        fast(x)  # raced with the update: either weights may show, but nothing stale is kept
    t.join()
    assert _final_error(fast, x) < 1e-5


def _slow_fold(monkeypatch, seconds: float) -> None:
    real_fold = packing.fold_double_conv

    def slow(block, dtype):
        time.sleep(seconds)  # releases the GIL: the writer runs in the middle of a pack
        return real_fold(block, dtype)

    monkeypatch.setattr(packing, "fold_double_conv", slow)


def _load_states(fast, rng, states):
    for i in range(6):
        fast.load_state_dict(states[i % 2])
        time.sleep(0.0007)


def _optimizer_steps(fast, rng, states):
    opt = torch.optim.SGD(fast.parameters(), lr=0.05)
    for p in fast.parameters():
        p.grad = torch.randn(p.shape, generator=rng)
    for _ in range(6):
        opt.step()
        time.sleep(0.0007)


def _no_grad_edits(fast, rng, states):
    for _ in range(6):
        with torch.no_grad():
            for m in fast.modules():
                if isinstance(m, torch.nn.BatchNorm2d):
                    m.running_mean.add_(0.1)  # BatchNorm buffers are folded into the pack too
            fast.head.bias.sub_(0.2)
            fast.encoder[0].conv1.weight.mul_(1.1)
        time.sleep(0.0007)


def _stale_trials(update, trials: int) -> list[tuple[int, float]]:
    """Run ``trials`` races of two inference threads against ``update``; the (trial, error) of
    each whose output, once every thread stopped, differs from the reference's."""
    states = [_other_weights(1), _other_weights(2)]
    x = torch.randn(X)
    rng = torch.Generator().manual_seed(3)
    failures, errors = [], []
    for trial in range(trials):
        _, fast = make_pair(**KW)
        stop = threading.Event()

        def reader(mode, fast=fast, stop=stop):
            try:
                while not stop.is_set():
                    with mode():
                        fast(x)
            except Exception as e:  # surfaced below: a thread's exception is otherwise lost
                errors.append(e)

        readers = [threading.Thread(target=reader, args=(m,))
                   for m in (torch.inference_mode, torch.no_grad)]
        for t in readers:
            t.start()
        time.sleep(0.002)
        update(fast, rng, states)
        stop.set()
        for t in readers:
            t.join()
        assert not errors, errors
        err = _final_error(fast, x)
        if not err < 1e-5:
            failures.append((trial, err))
    return failures


@pytest.mark.parametrize("update", [_load_states, _optimizer_steps, _no_grad_edits])
def test_stress_inference_threads_against_an_updating_thread(monkeypatch, update):
    """Two threads run inference (one under inference_mode, one under no_grad) while a third
    updates the weights; once all stop, the output equals the reference's on the final weights,
    in every trial."""
    _slow_fold(monkeypatch, 0.0005)
    failures = _stale_trials(update, TRIALS)
    assert not failures, f"stale output after {len(failures)}/{TRIALS} trials: {failures}"


def test_copied_and_pickled_models_get_a_working_empty_cache():
    """The cache holds a lock (which cannot be copied) and entries describing the original's
    tensors: a deep copy or an unpickled model starts with an empty cache of its own."""
    _, fast = make_pair(**KW)
    x = torch.randn(X)
    with torch.no_grad():
        fast(x)
    for twin in (copy.deepcopy(fast), pickle.loads(pickle.dumps(fast))):
        assert len(twin.weight_cache) == 0
        with torch.no_grad():
            twin.head.bias.add_(1.0)  # the copy's own weights, not the original's
        assert _final_error(twin, x) < 1e-5
        assert len(twin.weight_cache) == 1
    assert _final_error(fast, x) < 1e-5
