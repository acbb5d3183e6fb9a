"""The TensorBundle reader against checkpoints written by TensorFlow itself (generated here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from simclrv2.interop.tensorbundle import BundleError, TensorBundle, find_bundle_prefix, masked_crc32c

SUFFIX = "/.ATTRIBUTES/VARIABLE_VALUE"


def _values(tf) -> dict[str, object]:
    rng = np.random.default_rng(0)
    return {
        "f32": rng.normal(size=(3, 4, 5)).astype(np.float32),
        "f16": rng.normal(size=(7,)).astype(np.float16),
        "f64": rng.normal(size=(2, 2)),
        "i64": np.arange(-3, 9, dtype=np.int64).reshape(3, 4),
        "i32": np.array([1, -2, 2**31 - 1], np.int32),
        "u8": np.array([0, 7, 255], np.uint8),
        "flags": np.array([[True, False], [False, True]]),
        "scalar": np.float32(3.25),
        "empty": np.zeros((0, 3), np.float32),
        "words": np.array([b"hello", b"", b"x" * 300, "\u00e9t\u00e9".encode()], dtype=object),
        "bf16": tf.constant([1.5, -2.0, 0.15625], tf.bfloat16),
    }


@pytest.fixture(scope="module")
def tf2_checkpoint(tf, tmp_path_factory) -> tuple[Path, dict[str, object]]:
    values = _values(tf)
    variables = {k: tf.Variable(v) for k, v in values.items()}
    prefix = tf.train.Checkpoint(**variables).write(str(tmp_path_factory.mktemp("tf2") / "ckpt"))
    return Path(prefix), values


def test_reads_every_dtype_scalars_empty_and_strings_as_tensorflow_wrote_them(tf, tf2_checkpoint):
    prefix, values = tf2_checkpoint
    with TensorBundle(prefix) as bundle:
        assert set(bundle.shapes()) == {n for n, _ in tf.train.list_variables(str(prefix))}
        for name, expected in values.items():
            key = name + SUFFIX
            if name == "bf16":
                got = bundle.read_torch(key)
                assert got.dtype == torch.bfloat16
                assert got.float().tolist() == [1.5, -2.0, 0.15625]
                continue
            got = bundle.read(key)
            want = np.asarray(expected)
            assert got.shape == want.shape and bundle.entries[key].shape == want.shape
            if name == "words":
                assert got.tolist() == want.tolist()
            else:
                assert got.dtype == want.dtype
                np.testing.assert_array_equal(got, want)
        assert bundle.entries["scalar" + SUFFIX].shape == ()
        assert bundle.read_torch("i64" + SUFFIX).dtype == torch.int64
        bundle.verify()


def test_tf1_saver_names_and_the_checkpoint_file(tf, tmp_path):
    step = tf.Variable(1234, dtype=tf.int64)
    kernel = tf.Variable(np.arange(24, dtype=np.float32).reshape(2, 3, 4))
    saver = tf.compat.v1.train.Saver(var_list={"base_model/conv2d/kernel": kernel, "global_step": step})
    prefix = saver.save(None, str(tmp_path / "model.ckpt-1234"))
    for given in (tmp_path, prefix, prefix + ".index", prefix + ".data-00000-of-00001"):
        assert find_bundle_prefix(given) == Path(prefix)  # the directory goes through the 'checkpoint' file
    with TensorBundle(tmp_path) as bundle:
        assert bundle.shapes() == {"base_model/conv2d/kernel": (2, 3, 4), "global_step": ()}
        np.testing.assert_array_equal(bundle.read("base_model/conv2d/kernel"), kernel.numpy())
        assert int(bundle.read("global_step")) == 1234


def test_several_shards(tf, tmp_path):
    variables = {f"v{i}": tf.Variable(np.full((i + 1, 50), i, np.float32)) for i in range(4)}

    class OnePerShard(tf.train.experimental.ShardingCallback):
        description = "one tensor per shard"

        def __call__(self, shardable_tensors):
            return [{t.checkpoint_key: {t.slice_spec: t.tensor}} for t in shardable_tensors]

    options = tf.train.CheckpointOptions(experimental_sharding_callback=OnePerShard())
    prefix = tf.train.Checkpoint(**variables).write(str(tmp_path / "ckpt"), options=options)
    with TensorBundle(prefix) as bundle:
        assert bundle.num_shards == 5  # four variables and the object graph
        assert len({e.shard for e in bundle.entries.values()}) == 5
        for i in range(4):
            np.testing.assert_array_equal(bundle.read(f"v{i}{SUFFIX}"), np.full((i + 1, 50), i, np.float32))


def _copy(prefix: Path, dest: Path) -> Path:
    dest.mkdir()
    for f in prefix.parent.glob(prefix.name + ".*"):
        (dest / f.name).write_bytes(f.read_bytes())
    return dest / prefix.name


def test_altered_tensor_bytes_are_refused_naming_the_file(tf2_checkpoint, tmp_path):
    prefix = _copy(tf2_checkpoint[0], tmp_path / "copy")
    with TensorBundle(prefix) as bundle:
        entry = bundle.entries["f32" + SUFFIX]
    data = prefix.with_name(prefix.name + ".data-00000-of-00001")
    raw = bytearray(data.read_bytes())
    raw[entry.offset + 5] ^= 0x01  # one bit of one float
    data.write_bytes(bytes(raw))
    with TensorBundle(prefix) as bundle:
        bundle.read("i64" + SUFFIX)  # other tensors still read
        with pytest.raises(BundleError, match=r"data-00000-of-00001: checksum mismatch for 'f32"):
            bundle.read("f32" + SUFFIX)
        with pytest.raises(BundleError, match="checksum mismatch"):
            bundle.verify()


def test_truncated_data_and_altered_or_truncated_index_are_refused(tf2_checkpoint, tmp_path):
    prefix = _copy(tf2_checkpoint[0], tmp_path / "copy")
    data = prefix.with_name(prefix.name + ".data-00000-of-00001")
    index = prefix.with_name(prefix.name + ".index")
    good_data, good_index = data.read_bytes(), index.read_bytes()
    data.write_bytes(good_data[: len(good_data) - 10])
    with pytest.raises(BundleError, match=r"data-00000-of-00001 is truncated"):
        TensorBundle(prefix)  # refused when opened, before any tensor is read
    data.write_bytes(good_data)
    index.write_bytes(good_index[:-20])
    with pytest.raises(BundleError, match=r"\.index: not a TensorFlow checkpoint index"):
        TensorBundle(prefix)
    altered = bytearray(good_index)
    altered[10] ^= 0xFF  # inside the first data block
    index.write_bytes(bytes(altered))
    with pytest.raises(BundleError, match=r"\.index: checksum mismatch in the table block"):
        TensorBundle(prefix)
    data.unlink()
    index.write_bytes(good_index)
    with pytest.raises(BundleError, match=r"data-00000-of-00001 is missing"):
        TensorBundle(prefix)


def test_masked_crc32c_known_value():
    # CRC32C("123456789") = 0xE3069283 (RFC 3720 check value), then TensorFlow's mask.
    crc = 0xE3069283
    assert masked_crc32c(b"123456789") == ((((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def test_not_a_checkpoint(tmp_path):
    with pytest.raises(BundleError, match="no TensorFlow checkpoint"):
        TensorBundle(tmp_path)
    (tmp_path / "x.index").write_bytes(b"not a table at all, but long enough to hold a footer of 48 bytes...")
    with pytest.raises(BundleError, match="not a TensorFlow checkpoint index"):
        TensorBundle(tmp_path / "x")
