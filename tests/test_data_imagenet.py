"""ImageNet-1k (ILSVRC2012) reader on tiny fake trees: train class folders and the three val layouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from relssl.data import DataError, dataset_spec, dataset_splits, load_split
from relssl.data.imagenet import leaf_synsets, read_meta

# Not in sorted order on purpose: labels must follow the sorted wnids.
WNIDS = ["n09999999", "n01440764", "n02085620"]
SORTED = sorted(WNIDS)
COLORS = {"n01440764": (200, 40, 40), "n02085620": (40, 200, 40), "n09999999": (40, 40, 200)}
# Val image number -> wnid; val_00000001 .. val_00000005.
VAL = {1: "n02085620", 2: "n01440764", 3: "n09999999", 4: "n01440764", 5: "n09999999"}
VAL_LABELS = [SORTED.index(w) for _, w in sorted(VAL.items())]  # [1, 0, 2, 0, 2]
# ILSVRC2012_IDs of the devkit (not the sorted order) and one non-leaf synset that must be ignored.
SYNSETS = [(1, "n02085620", 0), (2, "n09999999", 0), (3, "n01440764", 0), (1001, "n00001740", 3)]


def jpeg(path: Path, color: tuple[int, int, int], size: tuple[int, int] = (20, 16)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path, "JPEG", quality=95)


def val_name(number: int) -> str:
    return f"ILSVRC2012_val_{number:08d}"


def make_train(root: Path) -> None:
    """Two or three JPEGs per class, of differing sizes, one in a nested images/ folder, one .jpeg."""
    for k, wnid in enumerate(WNIDS):
        for i in range(2 + (k == 0)):
            jpeg(root / "train" / wnid / f"{wnid}_{i}.JPEG", COLORS[wnid], (20 + 4 * i, 16 + 2 * k))
    jpeg(root / "train" / WNIDS[1] / "images" / "z_nested.jpeg", COLORS[WNIDS[1]], (24, 12))
    (root / "train" / WNIDS[1] / "notes.txt").write_text("not an image")


def make_flat_val(root: Path) -> None:
    for number, wnid in VAL.items():
        jpeg(root / "val" / f"{val_name(number)}.JPEG", COLORS[wnid])


def write_solution(path: Path, entries: dict[int, str]) -> None:
    rows = [f"{val_name(n)},{w} 10 12 40 30 {w} 1 2 3 4" for n, w in reversed(entries.items())]  # any row order
    path.write_text("ImageId,PredictionString\n" + "\n".join(rows) + "\n")


def write_devkit(root: Path, entries: dict[int, str], synsets: list[tuple[int, str, int]] = SYNSETS,
                 shape: tuple[int, ...] = (-1,)) -> None:
    from scipy.io import savemat

    ids = {wnid: i for i, wnid, _ in synsets}
    lines = [str(ids[entries[n]]) for n in range(1, max(entries) + 1)]
    (root / "ILSVRC2012_validation_ground_truth.txt").write_text("\n".join(lines) + "\n")
    data = root / "ILSVRC2012_devkit_t12" / "data"
    data.mkdir(parents=True)
    table = np.array(synsets, dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    savemat(data / "meta.mat", {"synsets": table.reshape(shape)})


def load(root: Path, split: str, tmp_path: Path, **kw):
    return load_split("imagenet", split, root, image_size=16, cache_dir=tmp_path / "cache", progress=False, **kw)


def test_registered_splits_and_defaults() -> None:
    spec = dataset_spec("imagenet")
    assert dataset_splits("imagenet") == ("train", "val", "test")
    assert spec.default_root == "imagenet" and spec.eval_splits == ("train", "val")
    assert spec.listing is not None and spec.source is not None and spec.summary


def test_train_labels_follow_sorted_wnids_through_the_cache(tmp_path: Path) -> None:
    root = tmp_path / "imagenet"
    make_train(root)
    train = load(root, "train", tmp_path)
    assert train.images.shape == (8, 16, 16, 3) and train.classes == tuple(SORTED)
    np.testing.assert_array_equal(train.labels, [0, 0, 0, 1, 1, 2, 2, 2])  # n01440764 has 2 + the nested one
    for image, label in zip(train.images, train.labels):  # solid colours survive JPEG and resizing within +-3
        assert np.abs(image.astype(int) - np.array(COLORS[SORTED[label]])).max() <= 3
    listed = dataset_spec("imagenet").listing(root, "train")
    # imagefolder's recursive walk in sorted order: images/ sorts before n01440764_0.JPEG
    assert [Path(f).name for f in listed.files[:3]] == ["z_nested.jpeg", "n01440764_0.JPEG", "n01440764_1.JPEG"]
    again = load(root, "train", tmp_path)  # from the cache
    np.testing.assert_array_equal(again.images, train.images)


def test_native_size_follows_the_first_train_image(tmp_path: Path) -> None:
    make_train(tmp_path)
    make_flat_val(tmp_path)
    write_solution(tmp_path / "LOC_val_solution.csv", VAL)
    kw = {"cache_dir": tmp_path / "cache", "progress": False}
    train, val = load_split("imagenet", "train", tmp_path, **kw), load_split("imagenet", "val", tmp_path, **kw)
    assert train.images.shape[1:] == val.images.shape[1:] == (12, 24, 3)  # the first train image, z_nested.jpeg


def test_val_in_class_folders(tmp_path: Path) -> None:
    make_train(tmp_path)
    for number, wnid in VAL.items():
        jpeg(tmp_path / "val" / wnid / f"{val_name(number)}.JPEG", COLORS[wnid])
    listed = dataset_spec("imagenet").listing(tmp_path, "val")
    assert listed.split == "val" and listed.classes == tuple(SORTED)
    np.testing.assert_array_equal(listed.labels, [0, 0, 1, 2, 2])  # grouped by sorted class folder
    assert Path(listed.files[0]).name == f"{val_name(2)}.JPEG"
    val = load(tmp_path, "val", tmp_path)
    np.testing.assert_array_equal(val.labels, listed.labels)


def test_flat_val_with_kaggle_solution_csv(tmp_path: Path) -> None:
    make_train(tmp_path)
    make_flat_val(tmp_path)
    write_solution(tmp_path / "LOC_val_solution.csv", VAL)
    listed = dataset_spec("imagenet").listing(tmp_path, "val")
    assert [Path(f).name for f in listed.files] == [f"{val_name(n)}.JPEG" for n in sorted(VAL)]
    assert listed.labels.dtype == np.int64
    np.testing.assert_array_equal(listed.labels, VAL_LABELS)
    val = load(tmp_path, "val", tmp_path)
    np.testing.assert_array_equal(val.labels, VAL_LABELS)
    for image, label in zip(val.images, val.labels):
        assert np.abs(image.astype(int) - np.array(COLORS[SORTED[label]])).max() <= 3


def test_solution_csv_inside_val_and_other_extensions(tmp_path: Path) -> None:
    make_train(tmp_path)
    make_flat_val(tmp_path)
    (tmp_path / "val" / f"{val_name(5)}.JPEG").rename(tmp_path / "val" / f"{val_name(5)}.png")
    write_solution(tmp_path / "val" / "LOC_val_solution.csv", VAL)
    listed = dataset_spec("imagenet").listing(tmp_path, "val")
    assert Path(listed.files[-1]).name == f"{val_name(5)}.png"
    np.testing.assert_array_equal(listed.labels, VAL_LABELS)


@pytest.mark.parametrize("shape", [(-1,), (1, -1), (-1, 1)])
def test_flat_val_with_devkit_ground_truth(tmp_path: Path, shape: tuple[int, ...]) -> None:
    make_train(tmp_path)
    make_flat_val(tmp_path)
    write_devkit(tmp_path, VAL, shape=shape)
    listed = dataset_spec("imagenet").listing(tmp_path, "val")
    np.testing.assert_array_equal(listed.labels, VAL_LABELS)
    val = load(tmp_path, "val", tmp_path)
    np.testing.assert_array_equal(val.labels, VAL_LABELS)


def test_meta_reader_parses_savemat_and_loadmat_nesting(tmp_path: Path) -> None:
    write_devkit(tmp_path, VAL)
    meta = tmp_path / "ILSVRC2012_devkit_t12" / "data" / "meta.mat"
    expected = {1: "n02085620", 2: "n09999999", 3: "n01440764"}  # the non-leaf 1001 is left out
    assert read_meta(meta) == expected
    from scipy.io import loadmat

    squeezed = loadmat(meta, squeeze_me=True)["synsets"]  # plain values, no 1x1 wrappers
    assert leaf_synsets(squeezed, meta) == expected
    nested = np.empty((4, 1), dtype=[("ILSVRC2012_ID", "O"), ("WNID", "O"), ("num_children", "O")])
    for row, (i, wnid, children) in enumerate(SYNSETS):  # loadmat's default: every field a 1x1 (or 1,) array
        nested[row, 0] = (np.array([[i]], np.uint16), np.array([wnid]), np.array([[children]], np.uint8))
    assert leaf_synsets(nested, meta) == expected


def test_test_is_an_alias_of_val(tmp_path: Path) -> None:
    make_train(tmp_path)
    make_flat_val(tmp_path)
    write_solution(tmp_path / "LOC_val_solution.csv", VAL)
    listed = dataset_spec("imagenet").listing(tmp_path, "test")
    assert listed.split == "val"
    np.testing.assert_array_equal(listed.labels, VAL_LABELS)
    val, test = load(tmp_path, "val", tmp_path), load(tmp_path, "test", tmp_path)
    np.testing.assert_array_equal(test.images, val.images)
    np.testing.assert_array_equal(test.labels, VAL_LABELS)


def test_class_names_from_synset_mapping(tmp_path: Path) -> None:
    make_train(tmp_path)
    (tmp_path / "LOC_synset_mapping.txt").write_text(
        "n01440764 tench, Tinca tinca\nn02085620 Chihuahua\nn09999999 tench, a second class of that name\n"
        "n00000001 unused\n")
    listed = dataset_spec("imagenet").listing(tmp_path, "train")
    assert listed.classes == ("tench (n01440764)", "Chihuahua", "tench (n09999999)")
    (tmp_path / "LOC_synset_mapping.txt").write_text("n01440764 tench, Tinca tinca\nn02085620 Chihuahua\n")
    assert load(tmp_path, "train", tmp_path).classes == ("tench", "Chihuahua", "n09999999")  # unnamed: the wnid


def test_kaggle_download_unpacked_as_is(tmp_path: Path) -> None:
    base = tmp_path / "ILSVRC" / "Data" / "CLS-LOC"
    make_train(base)
    make_flat_val(base)
    write_solution(tmp_path / "LOC_val_solution.csv", VAL)
    listed = dataset_spec("imagenet").listing(tmp_path, "val")
    np.testing.assert_array_equal(listed.labels, VAL_LABELS)
    assert listed.files[0].startswith(str(base / "val"))


def test_missing_folders_say_where_to_put_the_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"ImageNet folder .*nowhere does not exist; put the images in .*train/<wnid>"):
        load_split("imagenet", "train", tmp_path / "nowhere", download=True)
    (tmp_path / "val").mkdir()
    with pytest.raises(DataError, match=r"has no train/ folder; put the images in .*cannot be downloaded"):
        dataset_spec("imagenet").listing(tmp_path, "val")
    make_train(tmp_path)
    (tmp_path / "val").rmdir()
    with pytest.raises(DataError, match="has no val/ folder"):
        dataset_spec("imagenet").listing(tmp_path, "test")


def test_val_class_folder_not_in_train(tmp_path: Path) -> None:
    make_train(tmp_path)
    jpeg(tmp_path / "val" / "n01440764" / "a.JPEG", COLORS["n01440764"])
    jpeg(tmp_path / "val" / "n05555555" / "b.JPEG", COLORS["n01440764"])
    with pytest.raises(DataError, match=r"val folder .*n05555555 is of class n05555555, which has no folder in .*train"):
        dataset_spec("imagenet").listing(tmp_path, "val")


def test_flat_val_wnid_not_in_train(tmp_path: Path) -> None:
    make_train(tmp_path)
    make_flat_val(tmp_path)
    write_solution(tmp_path / "LOC_val_solution.csv", {**VAL, 3: "n05555555"})
    with pytest.raises(DataError, match=r"ILSVRC2012_val_00000003.JPEG \(per .*LOC_val_solution.csv\) is of class "
                                        r"n05555555, which has no folder"):
        dataset_spec("imagenet").listing(tmp_path, "val")


def test_labelled_image_missing_on_disk(tmp_path: Path) -> None:
    make_train(tmp_path)
    make_flat_val(tmp_path)
    write_devkit(tmp_path, {**VAL, 6: "n02085620"})
    with pytest.raises(DataError, match=r"ILSVRC2012_val_00000006 is listed in .*ground_truth.txt but .*val has no "
                                        r"image of that name \(1 listed"):
        dataset_spec("imagenet").listing(tmp_path, "val")


def test_flat_val_image_without_a_label(tmp_path: Path) -> None:
    make_train(tmp_path)
    make_flat_val(tmp_path)
    write_solution(tmp_path / "LOC_val_solution.csv", {n: w for n, w in VAL.items() if n != 4})
    with pytest.raises(DataError, match=r"ILSVRC2012_val_00000004.JPEG has no label in .*LOC_val_solution.csv"):
        dataset_spec("imagenet").listing(tmp_path, "val")


def test_flat_val_without_any_labels_file(tmp_path: Path) -> None:
    make_train(tmp_path)
    make_flat_val(tmp_path)
    with pytest.raises(DataError, match=r"holds images directly but no labels file was found: put Kaggle's "
                                        r"LOC_val_solution.csv or the devkit's ILSVRC2012_validation_ground_truth.txt"):
        load(tmp_path, "val", tmp_path)


def test_ground_truth_without_meta(tmp_path: Path) -> None:
    make_train(tmp_path)
    make_flat_val(tmp_path)
    write_devkit(tmp_path, VAL)
    (tmp_path / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").unlink()
    with pytest.raises(DataError, match=r"ground_truth.txt needs the devkit's ILSVRC2012_devkit_t12/data/meta.mat"):
        dataset_spec("imagenet").listing(tmp_path, "val")


def test_bad_labels_files(tmp_path: Path) -> None:
    make_train(tmp_path)
    make_flat_val(tmp_path)
    (tmp_path / "LOC_val_solution.csv").write_text("image,label\nILSVRC2012_val_00000001,n02085620\n")
    with pytest.raises(DataError, match="does not start with the header ImageId,PredictionString"):
        dataset_spec("imagenet").listing(tmp_path, "val")
    (tmp_path / "LOC_val_solution.csv").unlink()
    write_devkit(tmp_path, VAL)
    (tmp_path / "ILSVRC2012_validation_ground_truth.txt").write_text("1\n2\n7\n")
    with pytest.raises(DataError, match=r"ground_truth.txt line 3 \('7'\) is not an ILSVRC2012_ID of a leaf synset"):
        dataset_spec("imagenet").listing(tmp_path, "val")
    (tmp_path / "ILSVRC2012_devkit_t12" / "data" / "meta.mat").write_text("not a mat file")
    with pytest.raises(DataError, match="cannot read the synsets of"):
        dataset_spec("imagenet").listing(tmp_path, "val")


def test_bad_train_folders(tmp_path: Path) -> None:
    make_train(tmp_path)
    (tmp_path / "train" / "n07777777").mkdir()
    with pytest.raises(DataError, match=r"no images found in .*n07777777; add its images or remove the folder"):
        dataset_spec("imagenet").listing(tmp_path, "train")
    (tmp_path / "train" / "n07777777").rmdir()
    jpeg(tmp_path / "train" / "loose.JPEG", (0, 0, 0))
    with pytest.raises(DataError, match=r"holds image files directly \(loose.JPEG, ...\)"):
        dataset_spec("imagenet").listing(tmp_path, "train")


def test_a_class_list_may_name_wnids_when_classes_have_words(tmp_path: Path) -> None:
    """ImageNet-100 lists are wnids; with LOC_synset_mapping.txt the class names are words."""
    from relssl.data import load_listing

    root = tmp_path / "imagenet"
    make_train(root)
    (root / "LOC_synset_mapping.txt").write_text("\n".join(f"{w} name of {w}, other" for w in WNIDS) + "\n")
    wanted = tmp_path / "subset.txt"
    wanted.write_text(f"{WNIDS[2]}\n# a comment\n{WNIDS[0]}\n")
    sub = load_listing("imagenet", "train", root, class_list=str(wanted))
    assert sub.classes == (f"name of {WNIDS[2]}", f"name of {WNIDS[0]}")
    assert sub.class_ids == (WNIDS[2], WNIDS[0])
    assert sorted(sub.labels.tolist()) == [0, 0, 1, 1, 1]
    assert all(f"/{WNIDS[2 - 2 * y]}/" in f for f, y in zip(sub.files, sub.labels.tolist()))
