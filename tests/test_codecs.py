"""Exemplar codecs (memory/codec.py) and the byte rule they bring: encoded sizes, herding prefixes that fit
a byte share per class, shrinking, saving and loading (no torch, no training)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from memo_edge.errors import InputError
from memo_edge.memory import ExemplarSet, herding_order, select_exemplars
from memo_edge.memory.codec import RAW, CodecError, parse_codec
from memo_edge.memory.policy import MemoryPolicy


def _images(n: int = 40, size: int = 32, channels: int = 3, seed: int = 0) -> np.ndarray:
    """Smooth images with some texture: what photos look like to a codec (noise would not compress)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:size, :size] / size
    out = np.empty((n, size, size, channels), np.uint8)
    for i in range(n):
        a, b, c = rng.uniform(0.5, 3, 3)
        base = 127 + 100 * np.sin(a * 6 * xx + b * 4 * yy + c)[..., None] * rng.uniform(0.3, 1, channels)
        out[i] = np.clip(base + rng.normal(0, 6, base.shape), 0, 255).astype(np.uint8)
    return out


def _toy(classes: int = 3, per: int = 12, seed: int = 0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = rng.permutation(np.repeat(np.arange(classes) * 5 + 1, per)).astype(np.int64)
    return _images(classes * per, seed=seed), labels, rng.normal(size=(classes * per, 8))


def test_parse_codec_accepts_the_four_and_says_what_is_wrong() -> None:
    assert parse_codec("raw") == RAW and parse_codec(" PNG ").spec == "png"
    assert parse_codec("jpeg:75").quality == 75 and parse_codec("webp:90").spec == "webp:90"
    for bad, message in (("gif", "unknown"), ("jpeg", "needs a quality"), ("jpeg:0", "1 to 100"),
                         ("webp:101", "1 to 100"), ("png:50", "takes no quality"), ("raw,png", "unknown")):
        with pytest.raises(ValueError, match=message):
            parse_codec(bad)


@pytest.mark.parametrize("channels", [3, 1])
def test_round_trips(channels: int) -> None:
    images = _images(8, channels=channels)
    raw = images.shape[1] * images.shape[2] * channels
    for spec in ("raw", "png"):  # lossless: the same pixels back
        decoded, blobs = parse_codec(spec).round_trip(images)
        np.testing.assert_array_equal(decoded, images)
        np.testing.assert_array_equal(parse_codec(spec).decode_many(blobs, images.shape[1:]), images)
    assert all(len(b) == raw for b in parse_codec("raw").encode_many(images))
    for spec in ("jpeg:50", "jpeg:90", "webp:75"):  # lossy: close, much smaller, deterministic
        codec = parse_codec(spec)
        decoded, blobs = codec.round_trip(images)
        assert decoded.shape == images.shape and decoded.dtype == np.uint8
        assert np.abs(decoded.astype(int) - images).mean() < 12, spec
        assert max(len(b) for b in blobs) < raw / 2, spec
        assert codec.encode_many(images) == blobs
    low, high = (np.mean([len(b) for b in parse_codec(s).encode_many(images)]) for s in ("jpeg:50", "jpeg:90"))
    assert low < high


def test_jpeg_exemplars_are_stored_without_their_tables() -> None:
    """The 574 B of tables are the same for every image at one quality: rebuilt, not stored."""
    from io import BytesIO

    from PIL import Image

    image = _images(1)[0]
    codec = parse_codec("jpeg:75")
    stored = codec.encode(image)
    whole = BytesIO()
    Image.fromarray(image).save(whole, format="JPEG", quality=75)
    assert len(whole.getvalue()) - len(stored) > 500
    np.testing.assert_array_equal(codec.decode(stored, image.shape), np.asarray(Image.open(whole)))
    assert codec.header_sha256(3) and codec.header_sha256(3) != parse_codec("jpeg:76").header_sha256(3)
    assert parse_codec("webp:75").header_sha256(3) == RAW.header_sha256(3) == ""


def test_decode_refuses_what_is_not_an_image_of_the_shape() -> None:
    image = _images(1)[0]
    for spec in ("raw", "png", "jpeg:75", "webp:75"):
        codec = parse_codec(spec)
        blob = codec.encode(image)
        with pytest.raises(CodecError):
            codec.decode(blob[: len(blob) // 3], image.shape)
        with pytest.raises(CodecError):
            codec.decode(blob, (16, 16, 3))


# ---------------------------------------------------------------- the byte rule


@pytest.mark.parametrize("kind,value", [("total", 2000), ("total", 7), ("per_class", 13), ("exemplar_bytes", 999_999),
                                        ("bytes", 5_000_000)])
def test_raw_byte_shares_give_the_old_counts(kind: str, value: int) -> None:
    """Under raw, the byte share per class holds exactly the count the rule always gave."""
    policy = MemoryPolicy(kind, value)  # type: ignore[arg-type]
    old_counts = {  # the count rules as they were before shares were bytes
        "total": lambda seen, model, img: value // seen,
        "per_class": lambda seen, model, img: value,
        "exemplar_bytes": lambda seen, model, img: value // img // seen,
        "bytes": lambda seen, model, img: max(value - model, 0) // img // seen,
    }
    for seen in (1, 2, 3, 10, 30, 100):
        for img in (3072, 192, 150_528):
            for model in (0, 1_854_016):
                share = policy.class_bytes(seen, model_bytes=model, bytes_per_exemplar=img)
                assert share // img == policy.per_class(seen, model_bytes=model, bytes_per_exemplar=img)
                assert share // img == old_counts[kind](seen, model, img)


def test_raw_class_bytes_selects_what_per_class_selects() -> None:
    images, labels, features = _toy()
    raw = int(np.prod(images.shape[1:]))
    for count in (0, 1, 5, 50):
        assert select_exemplars(images, labels, features, class_bytes=count * raw + raw - 1) == \
            select_exemplars(images, labels, features, per_class=count)


@pytest.mark.parametrize("spec", ["png", "jpeg:75", "webp:75"])
def test_each_class_keeps_the_longest_herding_prefix_that_fits(spec: str) -> None:
    images, labels, features = _toy()
    codec = parse_codec(spec)
    decoded, blobs = codec.round_trip(images)
    sizes = np.array([len(b) for b in blobs])
    share = int(np.median(sizes) * 4.5)
    ex = select_exemplars(decoded, labels, features, class_bytes=share, encoded=blobs, codec=codec)
    assert ex.codec == codec and ex.nbytes == sum(len(b) for b in ex.encoded)
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        order = members[herding_order(features[members], len(members))]
        kept = int(np.sum(np.cumsum(sizes[order]) <= share))
        rows = np.flatnonzero(ex.labels == c)
        assert len(rows) == kept >= 1
        assert ex.sizes[rows].sum() <= share < ex.sizes[rows].sum() + sizes[order[kept]]  # the next does not fit
        np.testing.assert_array_equal(ex.images[rows[np.argsort(ex.ranks[rows])]], decoded[order[:kept]])
        assert [ex.encoded[i] for i in rows[np.argsort(ex.ranks[rows])]] == [blobs[i] for i in order[:kept]]


def test_shrinking_keeps_a_prefix_that_fits_the_new_share() -> None:
    images, labels, features = _toy()
    codec = parse_codec("jpeg:50")
    decoded, blobs = codec.round_trip(images)
    big = select_exemplars(decoded, labels, features, class_bytes=10**6, encoded=blobs, codec=codec)
    assert len(big) == len(images)
    for share in (0, 700, 2000, 5000, 10**6):
        small = big.fit(share)
        assert small == select_exemplars(decoded, labels, features, class_bytes=share, encoded=blobs, codec=codec)
        for c, n in small.counts().items():
            rows = small.labels == c
            assert small.sizes[rows].sum() <= share and sorted(small.ranks[rows]) == list(range(n))
    raw = select_exemplars(images, labels, features, per_class=9)
    assert raw.fit(5 * 3072 + 100) == raw.reduce(5)


def test_raw_is_a_codec_whose_round_trip_is_the_identity(tmp_path: Path) -> None:
    images, labels, features = _toy()
    seen, forms = RAW.round_trip(images)
    assert np.array_equal(seen, images) and RAW.fixed_size(images[0].size) == images[0].size
    assert np.shares_memory(forms.pixels, images)  # a view: raw exemplars are not held twice
    assert list(forms) == [image.tobytes() for image in images] and set(forms.sizes().tolist()) == {images[0].size}
    assert np.array_equal(RAW.decode_many(list(forms), images.shape[1:]), images)
    ex = select_exemplars(images, labels, features, class_bytes=3 * images[0].size, encoded=forms)
    assert ex == select_exemplars(images, labels, features, per_class=3)  # given or derived: the same set
    assert np.shares_memory(ex.encoded.pixels, ex.images) and ex.stored() == [image.tobytes() for image in ex.images]
    smaller = ex.fit(2 * images[0].size)
    assert smaller == ex.reduce(2) and np.shares_memory(smaller.encoded.pixels, smaller.images)
    ex.save(tmp_path / "raw.npz")
    with np.load(tmp_path / "raw.npz") as data:
        assert sorted(data.files) == ["images", "labels", "ranks"]  # the file raw sets had before codecs
    assert ExemplarSet.load(tmp_path / "raw.npz") == ex


def test_codecs_do_not_mix_and_encoded_forms_must_match_the_codec() -> None:
    images, labels, features = _toy()
    codec = parse_codec("jpeg:75")
    decoded, blobs = codec.round_trip(images)
    jpeg = select_exemplars(decoded, labels, features, per_class=3, encoded=blobs, codec=codec)
    raw = select_exemplars(images, labels + 100, features, per_class=3)
    with pytest.raises(ValueError, match="cannot join"):
        jpeg.extend(raw)
    with pytest.raises(ValueError, match="codec"):
        ExemplarSet(jpeg.images, jpeg.labels, jpeg.ranks, jpeg.encoded)  # encoded forms without their codec
    with pytest.raises(ValueError, match="one bytes object per image"):
        ExemplarSet(jpeg.images, jpeg.labels, jpeg.ranks, jpeg.encoded[:-1], codec)
    with pytest.raises(ValueError, match="codec"):
        select_exemplars(images, labels, features, per_class=3, encoded=blobs)
    assert ExemplarSet.empty((32, 32, 3), codec).extend(jpeg) == jpeg


def test_encoded_sets_save_only_their_stored_form_and_load_back(tmp_path: Path) -> None:
    images, labels, features = _toy()
    for spec in ("png", "jpeg:75", "webp:75"):
        codec = parse_codec(spec)
        decoded, blobs = codec.round_trip(images)
        ex = select_exemplars(decoded, labels, features, per_class=6, encoded=blobs, codec=codec)
        path = tmp_path / f"{spec.replace(':', '')}.npz"
        ex.save(path)
        with np.load(path) as data:
            assert "images" not in data.files and str(data["codec"]) == spec
            assert path.stat().st_size < ex.nbytes + 4096  # the encoded bytes and a small index, no pixels
        assert ExemplarSet.load(path) == ex
    empty = ExemplarSet.empty((32, 32, 3), parse_codec("jpeg:75"))
    empty.save(tmp_path / "empty.npz")
    assert ExemplarSet.load(tmp_path / "empty.npz") == empty


def test_a_damaged_encoded_exemplar_is_refused_by_name(tmp_path: Path) -> None:
    images, labels, features = _toy()
    codec = parse_codec("jpeg:75")
    decoded, blobs = codec.round_trip(images)
    ex = select_exemplars(decoded, labels, features, per_class=4, encoded=blobs, codec=codec)
    victim = int(np.flatnonzero((ex.labels == 6) & (ex.ranks == 2))[0])
    broken = list(ex.encoded)
    broken[victim] = broken[victim][:40]
    path = tmp_path / "broken.npz"
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in broken])]).astype(np.int64)
    np.savez(path, blobs=np.frombuffer(b"".join(broken), np.uint8), offsets=offsets, labels=ex.labels, ranks=ex.ranks,
             codec=np.array("jpeg:75"), image_shape=np.array([32, 32, 3]), codec_header=np.array(codec.header_sha256(3)))
    with pytest.raises(InputError, match=r"broken.npz.*exemplar 2 of label 6"):
        ExemplarSet.load(path)
    ex.save(path)
    with np.load(path) as data:
        arrays = dict(data)
    arrays["codec_header"] = np.array("0" * 64)  # written by a JPEG library with other tables
    np.savez(path, **arrays)
    with pytest.raises(InputError, match="tables differ"):
        ExemplarSet.load(path)
