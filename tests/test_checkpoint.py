"""jnas.checkpoint: round trip onto the mesh, retention, damaged checkpoints, resized states."""

from __future__ import annotations

import logging
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jnas import parallel
from jnas.checkpoint import Checkpointer


@pytest.fixture(scope="module")
def mesh():
    mesh = parallel.make_mesh()
    assert mesh.size == 4
    return mesh


def make_state(mesh, width: int = 3, offset: int = 0) -> dict:
    """A small search state of the real layout, with non-trivial optimizer states; `offset` shifts
    every value (same dtypes) so states of different steps differ."""
    key = jax.random.PRNGKey(0)
    params = {"stem": {"kernel": jax.random.normal(key, (2, width))},
              "head": {"bias": jnp.arange(width, dtype=jnp.float32)}}
    arch = {"normal": jnp.linspace(-1.0, 1.0, 12, dtype=jnp.float32).reshape(3, 4)}
    weight_tx = optax.chain(optax.add_decayed_weights(3e-4), optax.sgd(0.025, momentum=0.9))
    arch_tx = optax.adam(3e-4, b1=0.5)
    w_opt = weight_tx.update(params, weight_tx.init(params), params)[1]
    a_opt = arch_tx.update(arch, arch_tx.init(arch), arch)[1]
    state = {
        "params": params,
        "batch_stats": {"stem": {"mean": jnp.full((width,), 0.5, jnp.float32)}},
        "arch": arch,
        "w_opt": w_opt,
        "a_opt": a_opt,
        "step": jnp.asarray(7, jnp.int32),
        "rng": jax.random.PRNGKey(42),
    }
    state = jax.tree.map(lambda x: x + offset, state)
    return jax.device_put(state, parallel.replicated(mesh))


def extra_for(step: int, width: int = 3) -> dict:
    return {
        "epoch": step,
        "position": 16 * step,
        "width": width,
        "stage": step // 2,
        "masks": {"normal": [[True, False, True], [False, True, True]]},
        "history": [{"epoch": e, "train_loss": 2.5 / (e + 1), "genotype": "|nor_conv_3x3~0|"}
                    for e in range(step)],
    }


def host_copy(state) -> list[tuple[tuple, np.dtype, bytes]]:
    return [(np.shape(x), np.asarray(x).dtype, np.asarray(x).tobytes()) for x in jax.tree.leaves(state)]


def assert_bitwise_equal(restored, expected) -> None:
    assert jax.tree.structure(restored) == jax.tree.structure(expected)
    assert host_copy(restored) == host_copy(expected)


def save_steps(workdir, mesh, steps, keep: int = 5) -> None:
    with Checkpointer(workdir, keep=keep) as ckpt:
        for step in steps:
            assert ckpt.save(step, make_state(mesh, offset=step), extra_for(step))


def truncate_array_files(step_dir: Path) -> None:
    files = [f for f in (step_dir / "state").rglob("*") if f.is_file() and f.parent.name == "d"]
    assert files
    for f in files:
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def delete_array_metadata(step_dir: Path) -> None:
    (step_dir / "state" / "_METADATA").unlink()


def truncate_extra(step_dir: Path) -> None:
    f = step_dir / "extra" / "metadata"
    f.write_bytes(f.read_bytes()[:3])


def delete_commit_file(step_dir: Path) -> None:
    (step_dir / "commit_success.txt").unlink()


# Reading a damaged array makes orbax abandon its other pending reads, whose callbacks then find
# their event loop closed: noise from orbax's internals, not an error of the restore.
damaged_read_noise = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def unfinished_write(step_dir: Path) -> None:
    # What a save killed before its final rename leaves behind (orbax's tmp-directory naming).
    step_dir.rename(step_dir.parent / f"{step_dir.name}.orbax-checkpoint-tmp-1700000000000000")


def test_round_trip_is_bitwise_and_lands_on_the_mesh(tmp_path, mesh):
    state, extra = make_state(mesh, offset=3), extra_for(3)
    expected = host_copy(state)
    with Checkpointer(tmp_path, keep=2) as ckpt:
        assert ckpt.save(3, state, extra)
        # The async save has copied the arrays off the device when save returns: the search step
        # donates the state's buffers right after saving.
        for leaf in jax.tree.leaves(state):
            leaf.delete()
    with Checkpointer(tmp_path, keep=2) as ckpt:  # a new process resuming
        assert ckpt.steps() == [3]
        assert ckpt.latest_extra() == extra
        template = make_state(mesh)
        restored, restored_extra = ckpt.restore_latest(template)
    assert restored_extra == extra
    assert jax.tree.structure(restored) == jax.tree.structure(template)
    assert host_copy(restored) == expected
    for got, want in zip(jax.tree.leaves(restored), jax.tree.leaves(template)):
        assert got.dtype == want.dtype
        assert got.sharding == want.sharding
        assert got.sharding.is_fully_replicated and len(got.sharding.device_set) == 4


def test_abstract_template_and_template_function(tmp_path, mesh):
    save_steps(tmp_path, mesh, [1])
    replicated = parallel.replicated(mesh)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
                            make_state(mesh))
    seen = []
    with Checkpointer(tmp_path) as ckpt:
        restored, extra = ckpt.restore_latest(lambda extra: seen.append(extra) or abstract)
    assert seen == [extra_for(1)] and extra == extra_for(1)
    assert_bitwise_equal(restored, make_state(mesh, offset=1))
    assert all(x.sharding == replicated for x in jax.tree.leaves(restored))


def test_keeps_the_newest(tmp_path, mesh):
    save_steps(tmp_path, mesh, [1, 2, 3, 4], keep=2)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if p.name.isdigit()) == ["3", "4"]
    with Checkpointer(tmp_path, keep=2) as ckpt:
        assert ckpt.steps() == [3, 4]
        restored, extra = ckpt.restore_latest(make_state(mesh))
    assert extra == extra_for(4)
    assert_bitwise_equal(restored, make_state(mesh, offset=4))


@damaged_read_noise
@pytest.mark.parametrize("corrupt", [truncate_array_files, delete_array_metadata, truncate_extra,
                                     delete_commit_file, unfinished_write])
def test_damaged_newest_falls_back_to_previous(tmp_path, mesh, caplog, corrupt):
    save_steps(tmp_path, mesh, [1, 2, 3], keep=3)
    root = tmp_path / "checkpoints"
    corrupt(root / "3")
    with caplog.at_level(logging.WARNING):
        with Checkpointer(tmp_path, keep=3) as ckpt:
            restored, extra = ckpt.restore_latest(make_state(mesh))
            assert extra == extra_for(2)
            assert_bitwise_equal(restored, make_state(mesh, offset=2))
            assert ckpt.steps() == [1, 2]
            # The resumed run saves step 3 again, and retention counts only readable checkpoints.
            assert ckpt.save(3, make_state(mesh, offset=3), extra_for(3))
            ckpt.wait()
            assert ckpt.steps() == [1, 2, 3]
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    if corrupt is unfinished_write:
        assert any("unfinished checkpoint writes" in m and "3.orbax-checkpoint-tmp" in m for m in warnings)
        assert not any("tmp" in p.name for p in root.iterdir())  # orbax removed the leftover
    else:
        assert any("checkpoint step 3" in m and "unreadable" in m for m in warnings), warnings
        assert (root / "3.corrupt").is_dir()  # set aside for inspection, not deleted
    assert (root / "2").is_dir()
    with Checkpointer(tmp_path, keep=3) as ckpt:
        restored, extra = ckpt.restore_latest(make_state(mesh))
    assert extra == extra_for(3)
    assert_bitwise_equal(restored, make_state(mesh, offset=3))


@damaged_read_noise
def test_only_checkpoint_damaged_gives_none(tmp_path, mesh, caplog):
    save_steps(tmp_path, mesh, [5])
    truncate_array_files(tmp_path / "checkpoints" / "5")
    with caplog.at_level(logging.WARNING), Checkpointer(tmp_path) as ckpt:
        assert ckpt.restore_latest(make_state(mesh)) is None
    assert any("checkpoint step 5" in r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)


@damaged_read_noise
def test_widened_state(tmp_path, mesh):
    """A progressive method widens the params at a stage boundary: the template follows `extra`."""
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(mesh, width=3, offset=1), extra_for(1, width=3))
        ckpt.save(2, make_state(mesh, width=5, offset=2), extra_for(2, width=5))
    with Checkpointer(tmp_path) as ckpt:
        extra = ckpt.latest_extra()
        assert extra == extra_for(2, width=5)
        restored, _ = ckpt.restore_latest(make_state(mesh, width=extra["width"]))
        assert restored["params"]["stem"]["kernel"].shape == (2, 5)
        assert_bitwise_equal(restored, make_state(mesh, width=5, offset=2))

        with pytest.raises(ValueError, match=r"step 2 does not match the restore template.*params/head/bias: "
                                             r"saved \(5,\) float32, template \(3,\) float32"):
            ckpt.restore_latest(make_state(mesh, width=3))
        assert ckpt.steps() == [1, 2]  # a wrong template never costs a checkpoint
        assert (tmp_path / "checkpoints" / "2").is_dir()

        missing = make_state(mesh, width=5)
        del missing["arch"]
        with pytest.raises(ValueError, match="not in the template: arch/normal"):
            ckpt.restore_latest(missing)

    # The newest is damaged: a template function sizes the state for the checkpoint actually used.
    truncate_array_files(tmp_path / "checkpoints" / "2")
    with Checkpointer(tmp_path) as ckpt:
        restored, extra = ckpt.restore_latest(lambda extra: make_state(mesh, width=extra["width"]))
    assert extra == extra_for(1, width=3)
    assert_bitwise_equal(restored, make_state(mesh, width=3, offset=1))


def test_empty_workdir(tmp_path, mesh):
    with Checkpointer(tmp_path / "fresh") as ckpt:
        assert ckpt.steps() == [] and ckpt.latest_step() is None
        assert ckpt.latest_extra() is None
        assert ckpt.restore_latest(make_state(mesh)) is None


def test_bad_input(tmp_path, mesh):
    with pytest.raises(ValueError, match="keep=0"):
        Checkpointer(tmp_path, keep=0)
    state = make_state(mesh)
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError, match="not JSON-serialisable"):
            ckpt.save(1, state, {"loss": np.float32(1.0)})
        with pytest.raises(ValueError, match="only jax.Arrays"):
            ckpt.save(1, {**state, "step": 7}, extra_for(1))
        assert ckpt.save(2, state, extra_for(2))
        assert not ckpt.save(2, state, extra_for(2))  # e.g. SIGTERM right after the epoch's save
        with pytest.raises(ValueError, match="newer step 2"):
            ckpt.save(1, state, extra_for(1))
        with pytest.raises(ValueError, match="with a sharding"):
            ckpt.restore_latest(jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), state))
