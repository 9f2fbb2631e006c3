"""Sessions over the recurrent tiny model: streamed prefill and decode equal one whole run."""

import numpy as np
import pytest

from sbc.errors import InputError

IDS = np.random.default_rng(3).integers(0, 256, size=(2, 40), dtype=np.int64)


@pytest.fixture(scope="module")
def whole(tiny_module):
    return tiny_module.run({"ids": IDS})["logits"]


def test_module_is_recurrent_with_a_constant_memory_certificate(tiny_module):
    cert = tiny_module.manifest["recurrent"]["memory_certificate"]
    assert not cert["depends_on_sequence_length"]
    assert len([s for s in cert["state"] if s["name"].startswith("state.")]) == 6  # 2 GLA + 2x2 SWA
    assert [n for n, _ in tiny_module.inputs] == ["ids"]  # state stays inside sessions


def test_prefill_program_computes_only_the_last_logits(tiny_module, whole):
    assert tiny_module.manifest["recurrent"]["prefill_program"]
    state = tiny_module.initial_state({"batch": 2})
    outputs, last_state = tiny_module.step({"ids": IDS}, state, last_only=True)
    assert outputs["logits"].shape == (2, 1, 256)
    np.testing.assert_allclose(outputs["logits"][:, 0], whole[:, -1], atol=1e-5)
    _, full_state = tiny_module.step({"ids": IDS}, state)
    for name, value in full_state.items():
        np.testing.assert_array_equal(last_state[name], value)


@pytest.mark.parametrize("chunk", [7, 512])
def test_prefill_then_decode_equals_the_whole_sequence(tiny_module, whole, chunk):
    session = tiny_module.session(batch=2, chunk=chunk)
    np.testing.assert_allclose(session.prefill(IDS[:, :30]), whole[:, 29], atol=1e-4)
    for t in range(30, 40):
        logits = session.decode(IDS[:, t])
        np.testing.assert_allclose(logits, whole[:, t], atol=1e-4)
    assert session.position == 40


def test_state_save_load_round_trip(tiny_module, whole, tmp_path):
    session = tiny_module.session(batch=2)
    session.prefill(IDS[:, :20])
    session.save_state(tmp_path / "s.npz")
    session.reset()
    assert session.position == 0
    session.load_state(tmp_path / "s.npz")
    assert session.position == 20
    np.testing.assert_allclose(session.prefill(IDS[:, 20:]), whole[:, -1], atol=1e-4)
    with pytest.raises(InputError, match="another model or batch size"):
        tiny_module.session(batch=1).load_state(tmp_path / "s.npz")


def test_generate_greedy_and_seeded_sampling(tiny_module, whole):
    session = tiny_module.session(batch=2)
    greedy = session.generate(IDS[:, :40], 5)
    assert greedy.shape == (2, 5) and np.array_equal(greedy[:, 0], whole[:, -1].argmax(-1))
    sampled = [tiny_module.session(batch=2).generate(IDS[:, :8], 6, temperature=0.8, top_k=5, seed=1)
               for _ in range(2)]
    assert np.array_equal(*sampled)


def test_bad_session_inputs_are_one_line_errors(tiny_module, mlp_module):
    with pytest.raises(InputError, match="no recurrent state"):
        mlp_module.session()
    session = tiny_module.session(batch=2)
    with pytest.raises(InputError, match=r"ids must be \[2, T\]"):
        session.prefill(IDS[:1])
    with pytest.raises(InputError, match="integers"):
        session.prefill(IDS.astype(np.float32))
