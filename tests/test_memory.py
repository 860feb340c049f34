"""Exemplar memory: the budget arithmetic against the paper's figures, herding, the exemplar set."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memo_edge.errors import InputError
from memo_edge.memory import (
    BYTES_PER_PARAM,
    ExemplarSet,
    count_parameters,
    exemplar_bytes,
    exemplars_that_fit,
    herding_order,
    model_bytes,
    param_bytes,
    select_exemplars,
)
from memo_edge.memory.policy import MemoryPolicy

# Parameter counts from the MEMO reference (trunk G, branch S); P = G + S.
CIFAR_G, CIFAR_S = 112_016, 351_488
IMNET_G, IMNET_S = 2_782_784, 8_393_728
CIFAR_IMG = exemplar_bytes((32, 32, 3))
IMNET_IMG = exemplar_bytes((224, 224, 3))

# (setting, T, MEMO exemplars, single-backbone exemplars): the reference's aligned table.
CIFAR_ROWS = [
    ("CIFAR-100 B0 Inc10", 10, 3312, 7431),
    ("CIFAR-100 B0 Inc5", 20, 4771, 13466),
    ("CIFAR-100 B0 Inc20", 5, 2583, 4414),
    ("CIFAR-100 B50 Inc10", 6, 2729, 5017),
    ("CIFAR-100 B50 Inc5", 11, 3458, 8035),
    ("CIFAR-100 B50 Inc25", 3, 2291, 3207),
]
IMNET_ROWS = [
    ("ImageNet-100 B0 Inc10", 10, 2665, 4672),
    ("ImageNet-100 B50 Inc5", 11, 2739, 4969),
]


# ---------------------------------------------------------------- budget arithmetic


def test_exemplar_bytes() -> None:
    assert CIFAR_IMG == 3072
    assert IMNET_IMG == 150_528
    with pytest.raises(ValueError):
        exemplar_bytes((32, 32))
    with pytest.raises(ValueError):
        exemplar_bytes((32, 0, 3))


def test_one_backbone_in_exemplars() -> None:
    # "A model or 603 exemplars": 463,504 params * 4 B = 1,854,016 B = 603.5 CIFAR images.
    resnet32 = BYTES_PER_PARAM * (CIFAR_G + CIFAR_S)
    assert resnet32 == 1_854_016
    assert exemplars_that_fit(resnet32, CIFAR_IMG) == 603
    assert resnet32 - 603 * CIFAR_IMG == 1_600  # left over
    # One ResNet-18 "= 297 ImageNet exemplars" is the rounded ratio 296.995: it is 768 B short of
    # 297 images, so the floor rule (the one the aligned table needs) fits 296 whole exemplars.
    resnet18 = BYTES_PER_PARAM * (IMNET_G + IMNET_S)
    assert IMNET_G + IMNET_S == 11_176_512
    assert resnet18 == 44_706_048 == 297 * IMNET_IMG - 768
    assert round(resnet18 / IMNET_IMG) == 297
    assert exemplars_that_fit(resnet18, IMNET_IMG) == 296


def test_exemplars_that_fit_floors_and_never_goes_negative() -> None:
    assert exemplars_that_fit(3071, 3072) == 0
    assert exemplars_that_fit(3072, 3072) == 1
    assert exemplars_that_fit(-1, 3072) == 0
    assert exemplars_that_fit(0, 3072) == 0
    with pytest.raises(ValueError):
        exemplars_that_fit(100, 0)
    with pytest.raises(ValueError):
        exemplars_that_fit(100.0, 3072)  # type: ignore[arg-type]


def _aligned(method: str, backbone: str, tasks: int, img: int) -> int:
    from memo_edge.model.methods import METHODS, aligned_exemplars  # torch: the counts come from live modules
    return aligned_exemplars(METHODS[method], backbone, tasks, img)


def _model(method: str, backbone: str, tasks: int) -> int:
    from memo_edge.model.methods import METHODS, method_model_bytes
    return method_model_bytes(METHODS[method], backbone, tasks)


def test_the_backbones_have_the_reference_parameter_counts() -> None:
    from memo_edge.model import split_parameter_counts
    assert split_parameter_counts("resnet32") == (CIFAR_G, CIFAR_S)
    assert split_parameter_counts("resnet18") == (IMNET_G, IMNET_S)


@pytest.mark.parametrize(
    ("name", "tasks", "memo", "single", "g", "s", "img", "backbone"),
    [(*row, CIFAR_G, CIFAR_S, CIFAR_IMG, "resnet32") for row in CIFAR_ROWS]
    + [(*row, IMNET_G, IMNET_S, IMNET_IMG, "resnet18") for row in IMNET_ROWS],
)
def test_reference_aligned_table(
    name: str, tasks: int, memo: int, single: int, g: int, s: int, img: int, backbone: str
) -> None:
    assert _aligned("memo", backbone, tasks, img) == memo, name
    assert _aligned("replay", backbone, tasks, img) == single, name
    assert _aligned("der", backbone, tasks, img) == 2000, name
    # The closed forms the reference states, as a cross-check of the one-rule implementation.
    p = g + s
    assert memo == 2000 + (tasks * p - (g + tasks * s)) * 4 // img
    assert single == 2000 + (tasks - 1) * p * 4 // img


def test_aligned_budget_and_model_bytes() -> None:
    from memo_edge.model.methods import aligned_budget_bytes
    assert aligned_budget_bytes("resnet32", 10, CIFAR_IMG) == 24_684_160
    assert aligned_budget_bytes("resnet32", 1, 10, base_exemplars=0) == 4 * 463_504
    assert _model("memo", "resnet32", 1) == 1_854_016
    assert _model("memo", "resnet32", 10) == 14_507_584
    with pytest.raises(ValueError):
        _model("memo", "resnet32", 0)
    assert param_bytes(100) == 400


def test_design_worked_example() -> None:
    # tasks, model bytes, exemplar bytes, exemplars, per class: the design's table, through the device's rule.
    total, policy = 24_684_160, MemoryPolicy("bytes", 24_684_160)
    rows = []
    for tasks, seen in ((1, 10), (2, 20), (5, 50), (10, 100)):
        model = _model("memo", "resnet32", tasks)
        rows.append((tasks, model, total - model, exemplars_that_fit(total - model, 3072),
                     policy.per_class(seen, model_bytes=model, bytes_per_exemplar=3072)))
    assert rows == [
        (1, 1_854_016, 22_830_144, 7431, 743),
        (2, 3_259_968, 21_424_192, 6974, 348),
        (5, 7_477_824, 17_206_336, 5601, 112),
        (10, 14_507_584, 10_176_576, 3312, 33),
    ]
    # One rule: one task gives the single-backbone figure, ten give MEMO's aligned figure.
    assert rows[0][3] == _aligned("replay", "resnet32", 10, 3072)
    assert rows[-1][3] == _aligned("memo", "resnet32", 10, 3072)


def test_quota_shrinks_as_branches_are_added() -> None:
    total = 24_684_160
    counts = [exemplars_that_fit(total - _model("memo", "resnet32", t), CIFAR_IMG) for t in range(1, 11)]
    assert counts == sorted(counts, reverse=True)
    for t, count in enumerate(counts, start=1):
        assert _model("memo", "resnet32", t) + count * CIFAR_IMG <= total


def test_the_byte_share_of_a_small_total() -> None:
    policy = MemoryPolicy("bytes", 10_000)
    assert exemplars_that_fit(10_000 - 3_856, 3072) == 2
    assert policy.class_bytes(2, model_bytes=3_856, bytes_per_exemplar=3072) == 3_072
    assert policy.per_class(2, model_bytes=3_856, bytes_per_exemplar=3072) == 1
    assert exemplars_that_fit(100 - 100, 10) == 0
    assert MemoryPolicy("bytes", 100).class_bytes(1, model_bytes=101, bytes_per_exemplar=10) == 0  # model over
    with pytest.raises(ValueError):
        policy.class_bytes(0, model_bytes=10, bytes_per_exemplar=10)


def test_per_class_quota_b0inc10() -> None:
    policy = MemoryPolicy("total", 2000)
    assert [policy.per_class(10 * t, model_bytes=0, bytes_per_exemplar=3072) for t in range(1, 11)] == [
        200, 100, 66, 50, 40, 33, 28, 25, 22, 20,
    ]
    with pytest.raises(ValueError):
        policy.per_class(0, model_bytes=0, bytes_per_exemplar=3072)


def test_count_parameters_torch_module() -> None:
    torch = pytest.importorskip("torch")
    nn = torch.nn
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3, bias=False),  # 108
        nn.BatchNorm2d(4),  # 8 affine; running mean/var/num_batches_tracked are buffers
        nn.Flatten(),
        nn.Linear(4, 2),  # 10
    )
    assert count_parameters(net) == 108 + 8 + 10
    assert sum(b.numel() for b in net.buffers()) == 9  # present, but not counted
    for p in net[3].parameters():
        p.requires_grad_(False)
    assert count_parameters(net) == 126  # frozen parameters still take memory
    assert count_parameters(net[0], net[1]) == 116
    assert count_parameters(net, net[0]) == 126  # shared parameters once
    assert model_bytes(net) == 4 * 126


def test_count_parameters_duck_typed() -> None:
    class P:
        def __init__(self, n: int) -> None:
            self.n = n

        def numel(self) -> int:
            return self.n

    class M:
        def __init__(self, *sizes: int) -> None:
            self.ps = [P(n) for n in sizes]

        def parameters(self) -> list[P]:
            return self.ps

    assert count_parameters(M(3, 4), M(5)) == 12
    assert count_parameters() == 0


# ---------------------------------------------------------------- herding


def _naive_herding(features: np.ndarray, m: int) -> list[int]:
    """The textbook loop (PyCIL / iCaRL) with the direct distance, for comparison."""
    f = features / np.linalg.norm(features, axis=1, keepdims=True)
    mu = f.mean(axis=0)
    picked: list[int] = []
    running = np.zeros(f.shape[1])
    for k in range(1, min(m, len(f)) + 1):
        best, best_d = -1, np.inf
        for i in range(len(f)):
            if i in picked:
                continue
            d = np.linalg.norm(mu - (running + f[i]) / k)
            if d < best_d:
                best, best_d = i, d
        picked.append(best)
        running += f[best]
    return picked


def test_herding_hand_checked_2d() -> None:
    # Unit vectors at 0, 20 and 90 degrees: the mean points at ~34.7 degrees, so 20 degrees comes
    # first; then (f20 + f90)/2 lies nearer the mean than (f20 + f0)/2 (0.285 vs 0.425).
    angles = np.deg2rad([0.0, 20.0, 90.0])
    f = np.stack([np.cos(angles), np.sin(angles)], axis=1)
    assert herding_order(f, 3).tolist() == [1, 2, 0]
    # Scaling rows changes nothing: features are L2-normalised first.
    assert herding_order(f * np.array([[5.0], [0.1], [3.0]]), 3).tolist() == [1, 2, 0]


def test_herding_first_pick_is_nearest_to_mean() -> None:
    rng = np.random.default_rng(0)
    f = rng.normal(size=(40, 8))
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    nearest = int(np.argmin(np.linalg.norm(fn - fn.mean(axis=0), axis=1)))
    assert herding_order(f, 1).tolist() == [nearest]


def test_herding_matches_naive_loop() -> None:
    rng = np.random.default_rng(1)
    f = rng.normal(size=(60, 12))
    assert herding_order(f, 25).tolist() == _naive_herding(f, 25)


def test_herding_prefix_and_bounds() -> None:
    rng = np.random.default_rng(2)
    f = rng.normal(size=(30, 5)).astype(np.float32)
    full = herding_order(f, 10)
    np.testing.assert_array_equal(herding_order(f, 5), full[:5])
    everything = herding_order(f, 100)
    assert everything.dtype == np.int64
    assert sorted(everything.tolist()) == list(range(30))  # min(m, n), no repeats
    assert herding_order(f, 0).shape == (0,)
    assert herding_order(np.zeros((0, 5)), 3).shape == (0,)
    with pytest.raises(ValueError):
        herding_order(f, -1)
    with pytest.raises(ValueError):
        herding_order(f[0], 3)
    with pytest.raises(ValueError):
        herding_order(np.full((3, 2), np.nan), 1)


def test_herding_beats_random_subsets() -> None:
    rng = np.random.default_rng(3)
    f = rng.normal(size=(200, 16)) + rng.normal(size=16)
    fn = f / np.linalg.norm(f, axis=1, keepdims=True)
    mu = fn.mean(axis=0)
    for k in (5, 10, 20):
        herd = np.linalg.norm(fn[herding_order(f, k)].mean(axis=0) - mu)
        subsets = [rng.choice(200, k, replace=False) for _ in range(50)]
        rand = np.mean([np.linalg.norm(fn[s].mean(axis=0) - mu) for s in subsets])
        assert herd < rand / 2, (k, herd, rand)


# ---------------------------------------------------------------- exemplar set


def _toy_data(classes: int = 3, per: int = 12, seed: int = 0) -> tuple[np.ndarray, ...]:
    rng = np.random.default_rng(seed)
    n = classes * per
    labels = rng.permutation(np.repeat(np.arange(classes) * 7 + 2, per)).astype(np.int64)
    images = rng.integers(0, 256, size=(n, 4, 4, 3), dtype=np.uint8)
    features = rng.normal(size=(n, 6))
    return images, labels, features


def test_select_exemplars_herding_order_and_ranks() -> None:
    images, labels, features = _toy_data()
    ex = select_exemplars(images, labels, features, per_class=5)
    assert len(ex) == 15
    assert ex.image_shape == (4, 4, 3)
    assert ex.nbytes == 15 * 48
    assert ex.counts() == {2: 5, 9: 5, 16: 5}
    np.testing.assert_array_equal(ex.classes(), [2, 9, 16])
    for c in (2, 9, 16):
        members = np.flatnonzero(labels == c)
        expected = images[members[herding_order(features[members], 5)]]
        rows = ex.labels == c
        np.testing.assert_array_equal(ex.ranks[rows], np.arange(5))
        np.testing.assert_array_equal(ex.images[rows], expected)
    # A class smaller than the quota keeps everything it has.
    everything = select_exemplars(images, labels, features, per_class=50)
    assert everything.counts() == {2: 12, 9: 12, 16: 12}


def test_select_exemplars_validates() -> None:
    images, labels, features = _toy_data()
    with pytest.raises(ValueError):
        select_exemplars(images.astype(np.float32), labels, features, 5)
    with pytest.raises(ValueError):
        select_exemplars(images, labels[:-1], features, 5)
    with pytest.raises(ValueError):
        select_exemplars(images, labels, features, -1)


def test_reduce_keeps_the_herding_prefix() -> None:
    images, labels, features = _toy_data()
    ex = select_exemplars(images, labels, features, per_class=8)
    small = ex.reduce(3)
    assert small.counts() == {2: 3, 9: 3, 16: 3}
    assert small == select_exemplars(images, labels, features, per_class=3)
    for c in (2, 9, 16):
        np.testing.assert_array_equal(
            small.images[small.labels == c], ex.images[(ex.labels == c) & (ex.ranks < 3)]
        )
    assert ex.reduce(100) == ex
    assert len(ex.reduce(0)) == 0


def test_extend_refuses_present_classes() -> None:
    images, labels, features = _toy_data()
    old = select_exemplars(images, labels, features, per_class=4)
    new_images, new_labels, new_features = _toy_data(classes=2, seed=1)
    new = select_exemplars(new_images, new_labels + 100, new_features, per_class=4)
    both = old.extend(new)
    assert both.counts() == {**old.counts(), **new.counts()}
    assert ExemplarSet.empty((4, 4, 3)).extend(old) == old
    with pytest.raises(ValueError, match="already"):
        both.extend(new)
    with pytest.raises(ValueError):
        old.extend(ExemplarSet.empty((8, 8, 3)))


def test_exemplar_set_validates_construction() -> None:
    img = np.zeros((3, 2, 2, 3), dtype=np.uint8)
    lab = np.array([0, 0, 1], dtype=np.int64)
    ExemplarSet(img, lab, np.array([1, 0, 0], dtype=np.int64))  # row order is free
    with pytest.raises(ValueError, match="ranks"):
        ExemplarSet(img, lab, np.array([0, 2, 0], dtype=np.int64))  # a gap: not a prefix
    with pytest.raises(ValueError, match="ranks"):
        ExemplarSet(img, lab, np.array([0, 0, 0], dtype=np.int64))  # duplicate rank
    with pytest.raises(ValueError):
        ExemplarSet(img, lab.astype(np.int32), np.array([0, 1, 0], dtype=np.int64))
    with pytest.raises(ValueError):
        ExemplarSet(img.astype(np.float32), lab, np.array([0, 1, 0], dtype=np.int64))
    empty = ExemplarSet.empty((32, 32, 3))
    assert (len(empty), empty.nbytes, empty.counts()) == (0, 0, {})


def test_save_load_round_trip(tmp_path: Path) -> None:
    ex = select_exemplars(*_toy_data(), per_class=5)
    path = tmp_path / "sub" / "exemplars.npz"
    ex.save(path)
    assert path.exists()
    assert [p.name for p in path.parent.iterdir()] == ["exemplars.npz"]  # no temp file left
    loaded = ExemplarSet.load(path)
    assert loaded == ex
    assert loaded.images.dtype == np.uint8 and loaded.labels.dtype == np.int64
    empty = ExemplarSet.empty((4, 4, 3))
    empty.save(tmp_path / "empty.npz")
    assert ExemplarSet.load(tmp_path / "empty.npz") == empty


def test_load_refuses_damaged_files(tmp_path: Path) -> None:
    ex = select_exemplars(*_toy_data(), per_class=5)
    good = tmp_path / "good.npz"
    ex.save(good)
    data = good.read_bytes()

    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(data[: len(data) // 2])
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(b"not an npz file at all")
    empty = tmp_path / "empty.npz"
    empty.write_bytes(b"")
    flipped = tmp_path / "flipped.npz"
    # Corrupt bytes inside the images member: the zip CRC check must catch it.
    corrupt = bytearray(data)
    at = data.index(b"images.npy") + 400
    corrupt[at : at + 16] = bytes(16)
    flipped.write_bytes(bytes(corrupt))
    missing_key = tmp_path / "missing.npz"
    np.savez(missing_key, images=ex.images, labels=ex.labels)
    bad_dtype = tmp_path / "dtype.npz"
    np.savez(bad_dtype, images=ex.images.astype(np.float32), labels=ex.labels, ranks=ex.ranks)
    bad_ranks = tmp_path / "ranks.npz"
    np.savez(bad_ranks, images=ex.images, labels=ex.labels, ranks=ex.ranks + 1)
    npy = tmp_path / "plain.npy"
    np.save(npy, ex.images)

    damaged = [truncated, garbage, empty, flipped, missing_key, bad_dtype, bad_ranks, npy]
    for path in [*damaged, tmp_path / "absent.npz", tmp_path]:
        with pytest.raises(InputError) as info:
            ExemplarSet.load(path)
        message = str(info.value)
        assert str(path) in message, message
        assert "\n" not in message, message
