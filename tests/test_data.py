"""memo_edge.data: sources, dataset loaders, scenarios."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from memo_edge.data import (
    ArraySource,
    ConcatSource,
    FolderSource,
    Scenario,
    build_scenario,
    concat_sources,
    load_dataset,
    make_class_order,
    ordered_class_names,
    parse_dataset_spec,
    parse_scenario,
    remap,
    task_subset,
)
from memo_edge.data.datasets import pixel_stats
from memo_edge.errors import InputError
from memo_edge.utils.io import sha256_file

SHARED_CIFAR = Path(__file__).resolve().parents[1].parent / "shared" / "datasets" / "cifar100"  # ../shared
CIFAR_ORDER_START = (68, 56, 78, 8, 23, 84, 90, 65, 74, 76, 40, 89, 3, 92)


def _arrays(n: int, num_classes: int, seed: int = 0, size: int = 8) -> ArraySource:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    return ArraySource(images, np.arange(n, dtype=np.int64) % num_classes)


# --- class order and scenarios ------------------------------------------------------------------


def test_class_order_matches_reference_protocol_and_leaves_global_rng_alone():
    state = np.random.get_state()[1].copy()
    order = make_class_order(100)
    assert order[: len(CIFAR_ORDER_START)] == CIFAR_ORDER_START
    assert sorted(order) == list(range(100))
    assert np.array_equal(np.random.get_state()[1], state)
    assert make_class_order(100, seed=1993) == order
    assert make_class_order(100, seed=1) != order


def test_class_order_no_shuffle_and_explicit():
    assert make_class_order(5, shuffle=False) == (0, 1, 2, 3, 4)
    assert make_class_order(4, explicit=[3, 1, 0, 2]) == (3, 1, 0, 2)
    for bad in ([0, 1, 2], [0, 1, 2, 2], [0, 1, 2, 4], [0, 1, 2, 3, 4]):
        with pytest.raises(InputError, match="not a permutation of 0..3"):
            make_class_order(4, explicit=bad)
    with pytest.raises(InputError, match="integer"):
        make_class_order(2, explicit=[0.0, 1.0])


def test_parse_scenario():
    assert parse_scenario("B0Inc10") == (0, 10)
    assert parse_scenario("b50inc5") == (50, 5)
    assert parse_scenario(" B10INC2 ") == (10, 2)
    for bad in ("foo", "B0Inc", "Inc10", "B-1Inc10", "B0Inc0", "B0 Inc10"):
        with pytest.raises(InputError, match=r"B<base>Inc<increment>"):
            parse_scenario(bad)


def test_build_b0_and_b50():
    s = build_scenario("b0inc10", 100)
    assert s.spec == "B0Inc10" and s.num_tasks == 10 and s.num_classes == 100
    assert s.task_sizes == (10,) * 10
    assert s.boundaries() == list(range(10, 101, 10))
    assert s.class_order[:10] == CIFAR_ORDER_START[:10]
    assert s.known_before(0) == 0 and s.known_before(3) == 30 and s.known_before(10) == 100
    assert s.task_classes(3) == range(30, 40)

    s = build_scenario("B50Inc10", 100)
    assert s.task_sizes == (50, 10, 10, 10, 10, 10)
    assert s.task_classes(0) == range(0, 50) and s.task_classes(5) == range(90, 100)
    assert s.boundaries() == [50, 60, 70, 80, 90, 100]
    with pytest.raises(InputError, match="task 6 out of range"):
        s.task_classes(6)


def test_build_remainder_task_and_options():
    assert build_scenario("B0Inc4", 10).task_sizes == (4, 4, 2)
    assert build_scenario("B5Inc10", 101).task_sizes == (5,) + (10,) * 9 + (6,)
    assert build_scenario("B0Inc5", 10, shuffle=False).class_order == tuple(range(10))
    assert build_scenario("B0Inc2", 4, class_order=[3, 2, 1, 0]).class_order == (3, 2, 1, 0)


@pytest.mark.parametrize(
    ("spec", "num_classes", "expected"),
    [
        ("B0Inc1", 100, r"task-00 .task 1 of 100. would have 1 class.*at least 2.*try B0Inc2"),
        ("B0Inc10", 21, r"task-02 .task 3 of 3. would have 1 class.*try B11Inc10"),
        ("B1Inc10", 100, r"task-00 .task 1 of 11. would have 1 class.*try B0Inc10"),
        ("B120Inc10", 100, r"base of 120 classes exceeds the dataset's 100 classes.*try B90Inc10"),
        ("B0Inc120", 100, r"increment of 120 does not fit the 100 classes"),
        ("B50Inc60", 100, r"increment of 60 does not fit the 50 classes left.*try B50Inc50"),
        ("foo", 100, r"bad scenario 'foo': expected B<base>Inc<increment>"),
    ],
)
def test_build_errors_explain_and_suggest(spec, num_classes, expected):
    with pytest.raises(InputError, match=expected):
        build_scenario(spec, num_classes)


def test_scenario_json_round_trip_and_validation():
    s = build_scenario("B4Inc3", 10)
    d = json.loads(json.dumps(s.to_json()))
    assert Scenario.from_json(d) == s
    with pytest.raises(InputError, match="malformed"):
        Scenario.from_json({"spec": "B0Inc2", "class_order": [0, 1]})
    with pytest.raises(InputError, match="malformed"):
        Scenario.from_json({"spec": "B0Inc2", "class_order": [0.0, 1.0], "task_sizes": [2]})
    with pytest.raises(InputError, match="add up"):
        Scenario.from_json({"spec": "B0Inc2", "class_order": [1, 0], "task_sizes": [2, 2]})
    with pytest.raises(InputError, match="permutation"):
        Scenario("B0Inc2", (0, 0), (2,))


def test_remap_follows_class_order_and_task_subset_picks_exact_labels():
    scenario = build_scenario("B4Inc3", 10)
    source = _arrays(200, 10)
    mapped = remap(source, scenario)
    assert source.labels[:10].tolist() == list(range(10))  # the original is untouched
    for new, original in enumerate(scenario.class_order):
        assert np.all(mapped.labels[source.labels == original] == new)
    np.testing.assert_array_equal(mapped.take(np.arange(5)), source.take(np.arange(5)))

    for task in range(scenario.num_tasks):
        part = task_subset(mapped, scenario, task)
        assert set(part.labels.tolist()) == set(scenario.task_classes(task))
        assert len(part) == np.isin(mapped.labels, list(scenario.task_classes(task))).sum()
        seen = task_subset(mapped, scenario, task, seen=True)
        assert set(seen.labels.tolist()) == set(range(scenario.boundaries()[task]))
        keep = np.flatnonzero(mapped.labels < scenario.boundaries()[task])
        np.testing.assert_array_equal(seen.take(np.arange(len(seen))), mapped.take(keep))

    with pytest.raises(InputError, match="labels span"):
        remap(_arrays(20, 12), scenario)


def test_ordered_class_names():
    dataset = load_dataset("digits")
    scenario = build_scenario("B0Inc2", 10, class_order=[9, 8, 7, 6, 5, 4, 3, 2, 1, 0])
    assert ordered_class_names(dataset, scenario) == tuple("9876543210")
    with pytest.raises(InputError, match="covers 4 classes"):
        ordered_class_names(dataset, build_scenario("B0Inc2", 4))


# --- sources ------------------------------------------------------------------------------------


def test_array_source_take_subset_with_labels():
    source = _arrays(10, 3)
    assert source.image_shape == (8, 8, 3) and len(source) == 10 and source.labels.dtype == np.int64
    idx = np.array([7, 2, 2, 0])
    np.testing.assert_array_equal(source.take(idx), source.images[idx])
    sub = source.subset(idx)
    assert isinstance(sub, ArraySource) and sub.labels.tolist() == [1, 2, 2, 0]
    relabelled = source.with_labels(np.arange(10, dtype=np.int32))
    assert relabelled.labels.dtype == np.int64 and relabelled.images is source.images
    assert source.labels.tolist()[:3] == [0, 1, 2]
    assert source.take(np.array([], np.int64)).shape == (0, 8, 8, 3)
    with pytest.raises(IndexError):
        source.take(np.array([10]))
    with pytest.raises(InputError, match="uint8"):
        ArraySource(np.zeros((2, 4, 4, 3), np.float32), np.zeros(2, np.int64))
    with pytest.raises(InputError, match="expected 3 labels"):
        ArraySource(np.zeros((3, 4, 4, 3), np.uint8), np.zeros(2, np.int64))
    with pytest.raises(InputError, match="integers"):
        ArraySource(np.zeros((2, 4, 4, 3), np.uint8), np.zeros(2, np.float32))


def test_concat_sources_arrays_become_one_array():
    a, b = _arrays(5, 2, seed=1), _arrays(3, 2, seed=2)
    both = concat_sources([a, b])
    assert isinstance(both, ArraySource) and len(both) == 8
    np.testing.assert_array_equal(both.images, np.concatenate([a.images, b.images]))
    assert both.labels.tolist() == a.labels.tolist() + b.labels.tolist()
    assert concat_sources([a]) is a
    with pytest.raises(InputError, match="different shapes"):
        concat_sources([a, _arrays(2, 2, size=4)])
    with pytest.raises(InputError, match="nothing"):
        concat_sources([])


def _write_png(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (40, 30)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    noise = rng.integers(0, 40, (size[1], size[0], 3))
    Image.fromarray(np.clip(np.array(color) + noise, 0, 255).astype(np.uint8)).save(path)


def test_concat_sources_mixed_dispatches_to_parts(tmp_path):
    paths = [tmp_path / f"{i}.png" for i in range(4)]
    for i, p in enumerate(paths):
        _write_png(p, (60 * i, 10, 200))
    folder = FolderSource(paths, np.array([0, 1, 0, 1]), image_size=8, resize_to=9)
    arrays = _arrays(3, 2)
    mixed = concat_sources([folder, arrays])
    assert isinstance(mixed, ConcatSource) and len(mixed) == 7 and mixed.image_shape == (8, 8, 3)
    assert mixed.labels.tolist() == [0, 1, 0, 1, 0, 1, 0]
    idx = np.array([5, 1, 6, 0, 5])
    expected = np.stack([arrays.images[1], folder.take(np.array([1]))[0], arrays.images[2],
                         folder.take(np.array([0]))[0], arrays.images[1]])
    np.testing.assert_array_equal(mixed.take(idx), expected)

    sub = mixed.subset(idx)
    assert len(sub) == 5 and sub.labels.tolist() == [1, 1, 0, 0, 1]
    np.testing.assert_array_equal(sub.take(np.array([2, 1])), expected[[2, 1]])
    np.testing.assert_array_equal(sub.subset(np.array([0])).take(np.array([0])), expected[[0]])
    relabelled = sub.with_labels(np.arange(5) + 10)
    assert relabelled.labels.tolist() == [10, 11, 12, 13, 14]
    np.testing.assert_array_equal(relabelled.take(np.arange(5)), expected)
    assert sub.labels.tolist() == [1, 1, 0, 0, 1]


def test_folder_source_matches_torchvision_eval_view_and_names_bad_files(tmp_path):
    from torchvision.transforms.v2 import functional as tvf  # reference only, not used by the product

    path = tmp_path / "wide.png"
    _write_png(path, (120, 80, 40), size=(53, 31))
    source = FolderSource([path], np.array([0]), image_size=24, resize_to=27)
    expected = np.asarray(tvf.center_crop(tvf.resize(Image.open(path).convert("RGB"), 27), 24))
    np.testing.assert_array_equal(source.take(np.array([0]))[0], expected)

    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"not an image")
    sub = FolderSource([path, bad], np.array([0, 1]), image_size=24, resize_to=27).subset(np.array([1]))
    assert isinstance(sub, FolderSource) and sub.paths == [bad]
    with pytest.raises(InputError, match=r"broken\.jpg: cannot read image"):
        sub.take(np.array([0]))
    with pytest.raises(InputError, match="image_size <= resize_to"):
        FolderSource([path], np.array([0]), image_size=24, resize_to=20)


# --- datasets -----------------------------------------------------------------------------------


def test_digits_shapes_split_and_determinism():
    ds = load_dataset("digits")
    assert ds.name == "digits" and ds.augment == "cifar" and ds.num_classes == 10
    assert ds.class_names == tuple(str(c) for c in range(10))
    assert ds.image_shape == (32, 32, 3)
    for split in (ds.train, ds.test):
        images = split.take(np.arange(len(split)))
        assert images.dtype == np.uint8 and images.shape == (len(split), 32, 32, 3)
        assert np.array_equal(images[..., 0], images[..., 2])
        assert set(split.labels.tolist()) == set(range(10))
    assert len(ds.train) + len(ds.test) == 1797
    for c in range(10):
        total = (ds.train.labels == c).sum() + (ds.test.labels == c).sum()
        assert (ds.test.labels == c).sum() == round(0.2 * total)
    mean, std = pixel_stats(ds.train.images)
    assert ds.mean == pytest.approx(mean) and ds.std == pytest.approx(std) and 0 < ds.std[0] < 0.5
    again = load_dataset("digits")
    np.testing.assert_array_equal(again.train.images, ds.train.images)
    np.testing.assert_array_equal(again.test.labels, ds.test.labels)


def test_dataset_specs_are_validated():
    for bad in ("foo", "mnist", "npz", "imagefolder:", "digits:/x"):
        with pytest.raises(InputError, match="dataset"):
            load_dataset(bad)
    with pytest.raises(InputError, match="digits, cifar100, npz:PATH, imagefolder:PATH"):
        parse_dataset_spec("foo")
    kind, path = parse_dataset_spec("NPZ:/data/x")
    assert kind.name == "npz" and path == Path("/data/x")
    with pytest.raises(InputError, match="--image-size 64 applies to imagefolder only"):
        load_dataset("digits", image_size=64)


def test_cifar100_loader_errors_say_pass_download(tmp_path):
    with pytest.raises(InputError, match="--download"):
        load_dataset("cifar100")
    with pytest.raises(InputError, match=f"no CIFAR-100 in {tmp_path}.*pass --download"):
        load_dataset("cifar100", data_dir=tmp_path)
    (tmp_path / "cifar-100-python").mkdir()
    (tmp_path / "cifar-100-python" / "train").write_bytes(b"junk")
    with pytest.raises(InputError, match="md5 check; pass --download"):
        load_dataset("cifar100", data_dir=tmp_path)


def _write_npz_dataset(root: Path, *, meta: bool = True, names: int = 3) -> None:
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    parts = {"train-00.npz": 12, "train-01.npz": 9, "test-00.npz": 6}
    for name, n in parts.items():
        x = rng.integers(0, 256, (n, 6, 6, 3), dtype=np.uint8)
        np.savez(root / name, x=x, y=np.arange(n) % 3)
    if meta:
        files = [{"file": f, "sha256": sha256_file(root / f), "bytes": (root / f).stat().st_size} for f in parts]
        record = {"class_names": ["ant", "bee", "cat"][:names], "files": files,
                  "pixel_stats_train": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}}
        (root / "meta.json").write_text(json.dumps(record))


def test_npz_loads_with_meta(tmp_path):
    _write_npz_dataset(tmp_path / "d")
    ds = load_dataset(f"npz:{tmp_path / 'd'}")
    assert len(ds.train) == 21 and len(ds.test) == 6 and ds.image_shape == (6, 6, 3)
    assert ds.class_names == ("ant", "bee", "cat") and ds.augment == "cifar"
    assert ds.mean == (0.5, 0.4, 0.3) and ds.std == (0.2, 0.25, 0.3)
    first = np.load(tmp_path / "d" / "train-00.npz")
    np.testing.assert_array_equal(ds.train.take(np.arange(12)), first["x"])
    assert ds.train.labels.dtype == np.int64 and ds.train.labels[12:15].tolist() == [0, 1, 2]


def test_npz_without_meta_derives_names_and_stats(tmp_path):
    _write_npz_dataset(tmp_path, meta=False)
    ds = load_dataset(f"npz:{tmp_path}")
    assert ds.class_names == ("0", "1", "2")
    mean, std = pixel_stats(ds.train.images)
    assert ds.mean == pytest.approx(mean) and ds.std == pytest.approx(std)


def test_npz_flipped_byte_fails_sha256_naming_the_file(tmp_path):
    _write_npz_dataset(tmp_path)
    target = tmp_path / "train-01.npz"
    data = bytearray(target.read_bytes())
    data[len(data) // 2] ^= 0xFF
    target.write_bytes(bytes(data))
    with pytest.raises(InputError, match=r"train-01\.npz sha256 mismatch: expected [0-9a-f]{64}, found [0-9a-f]{64}"):
        load_dataset(f"npz:{tmp_path}")


def test_npz_truncated_file_is_an_input_error(tmp_path):
    _write_npz_dataset(tmp_path)
    target = tmp_path / "test-00.npz"
    target.write_bytes(target.read_bytes()[:200])
    with pytest.raises(InputError, match=r"test-00\.npz size mismatch"):
        load_dataset(f"npz:{tmp_path}")
    (tmp_path / "meta.json").unlink()  # without checksums the reader itself must catch it
    with pytest.raises(InputError, match=r"test-00\.npz is corrupted or not an npz"):
        load_dataset(f"npz:{tmp_path}")


def test_npz_content_errors_name_the_file(tmp_path):
    with pytest.raises(InputError, match="no such directory"):
        load_dataset(f"npz:{tmp_path / 'missing'}")
    with pytest.raises(InputError, match=r"no train-\*\.npz files"):
        load_dataset(f"npz:{tmp_path}")

    _write_npz_dataset(tmp_path, meta=False)
    np.savez(tmp_path / "test-00.npz", x=np.zeros((2, 6, 6, 3), np.uint8), y=np.array([0, 3]))
    with pytest.raises(InputError, match=r"test-00\.npz: label 3 out of range 0..2"):
        load_dataset(f"npz:{tmp_path}")
    np.savez(tmp_path / "test-00.npz", x=np.zeros((2, 6, 6, 3), np.float32), y=np.array([0, 1]))
    with pytest.raises(InputError, match=r"test-00\.npz: x must be uint8"):
        load_dataset(f"npz:{tmp_path}")
    np.savez(tmp_path / "test-00.npz", images=np.zeros((2, 6, 6, 3), np.uint8))
    with pytest.raises(InputError, match=r"test-00\.npz lacks key"):
        load_dataset(f"npz:{tmp_path}")
    np.savez(tmp_path / "train-01.npz", x=np.zeros((2, 6, 6, 3), np.uint8), y=np.array([-1, 0]))
    with pytest.raises(InputError, match=r"train-01\.npz: label -1 out of range"):
        load_dataset(f"npz:{tmp_path}")

    _write_npz_dataset(tmp_path / "two", names=2)
    with pytest.raises(InputError, match=r"train-00\.npz: label 2 out of range 0..1"):
        load_dataset(f"npz:{tmp_path / 'two'}")
    (tmp_path / "two" / "test-00.npz").unlink()
    with pytest.raises(InputError, match=r"test-00\.npz is listed in meta.json but missing"):
        load_dataset(f"npz:{tmp_path / 'two'}")


def _make_imagefolder(root: Path) -> None:
    colors = {"cat": (200, 30, 30), "dog": (30, 30, 200)}
    for cls, color in colors.items():
        for i in range(3):
            _write_png(root / "train" / cls / f"{i}.png", color)
        _write_png(root / "val" / cls / "0.PNG", color)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")


def test_imagefolder_loads_lazily_at_image_size(tmp_path):
    _make_imagefolder(tmp_path)
    ds = load_dataset(f"imagefolder:{tmp_path}", image_size=24)
    assert ds.class_names == ("cat", "dog") and ds.augment == "imagenet"
    assert ds.mean == (0.485, 0.456, 0.406) and ds.std == (0.229, 0.224, 0.225)
    assert isinstance(ds.train, FolderSource) and ds.train.resize_to == 27
    assert len(ds.train) == 6 and len(ds.test) == 2 and ds.image_shape == (24, 24, 3)
    images = ds.train.take(np.arange(6))
    assert images.shape == (6, 24, 24, 3) and images.dtype == np.uint8
    assert ds.train.labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert images[:3, ..., 0].mean() > images[:3, ..., 2].mean()  # cats are red, dogs blue
    assert images[3:, ..., 2].mean() > images[3:, ..., 0].mean()
    assert ds.test.labels.tolist() == [0, 1]
    assert load_dataset(f"imagefolder:{tmp_path}").train.image_shape == (224, 224, 3)


def test_imagefolder_errors(tmp_path):
    _make_imagefolder(tmp_path)
    _write_png(tmp_path / "val" / "emu" / "0.png", (0, 0, 0))
    with pytest.raises(InputError, match=r"class folders differ .*only in val: \['emu'\]"):
        load_dataset(f"imagefolder:{tmp_path}")
    with pytest.raises(InputError, match="no such directory"):
        load_dataset(f"imagefolder:{tmp_path / 'nope'}")
    (tmp_path / "val").rename(tmp_path / "validation")
    with pytest.raises(InputError, match="missing val/"):
        load_dataset(f"imagefolder:{tmp_path}")


@pytest.mark.skipif(not SHARED_CIFAR.is_dir(), reason=f"shared CIFAR-100 copy not found at {SHARED_CIFAR}")
def test_shared_cifar100_npz_copy(caplog):
    with caplog.at_level(logging.DEBUG, logger="memo_edge.data"):  # whichever memo_edge.data module checks the files
        ds = load_dataset(f"npz:{SHARED_CIFAR}")
    assert sum("sha256 ok" in r.getMessage() for r in caplog.records) == 6
    assert len(ds.train) == 50000 and len(ds.test) == 10000 and ds.image_shape == (32, 32, 3)
    assert ds.num_classes == 100 and ds.class_names[:3] == ("apple", "aquarium_fish", "baby")
    assert ds.train.labels[:10].tolist() == [19, 29, 0, 11, 1, 86, 90, 28, 23, 31]
    assert ds.test.labels[:10].tolist() == [49, 33, 72, 51, 71, 92, 15, 14, 23, 0]
    assert ds.mean == pytest.approx((0.5071, 0.4865, 0.4409)) and ds.std == pytest.approx((0.2673, 0.2564, 0.2762))
    assert np.bincount(ds.train.labels).tolist() == [500] * 100
    assert ds.train.take(np.arange(10))[:, 0, 0, 0].tolist() == [255, 255, 250, 124, 43, 190, 50, 178, 122, 255]
    scenario = build_scenario("B0Inc10", ds.num_classes)
    first = task_subset(remap(ds.train, scenario), scenario, 0)
    assert len(first) == 5000 and ordered_class_names(ds, scenario)[0] == ds.class_names[68]
