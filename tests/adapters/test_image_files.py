"""Datasets from image files: a folder per class, or a list file of `path label` lines."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from mosaserve.adapters.datasets import load_dataset
from mosaserve.adapters.image_files import DatasetError, load_image_folder, load_list_file, square_crop


def write_folder(root, counts=(("cat", 3), ("dog", 2))):
    for name, count in counts:
        (root / name).mkdir(parents=True)
        for i in range(count):
            colour = 200 if name == "cat" else 30
            size = (20 + i * 7, 16)  # different sizes and aspect ratios
            if i % 2:
                Image.new("L", size, colour).save(root / name / f"{i}.png")
            else:
                Image.new("RGB", size, (colour,) * 3).save(root / name / f"{i}.jpg", quality=95)
    (root / "cat" / "notes.txt").write_text("not an image, ignored")


def test_image_folder_gives_one_class_per_folder_at_one_size(tmp_path):
    write_folder(tmp_path / "pets")
    data = load_image_folder(tmp_path / "pets", image_size=12)
    assert data.name == "pets" and data.class_names == ("cat", "dog")
    assert data.images.shape == (5, 3, 12, 12) and data.labels.tolist() == [0, 0, 0, 1, 1]
    assert data.images[0].float().mean() > 180 and data.images[4].float().mean() < 50
    assert load_dataset(f"folder:{tmp_path / 'pets'}", 12).labels.tolist() == [0, 0, 0, 1, 1]


def test_list_file_with_integer_or_named_labels(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "train800.txt").write_text("cat/0.jpg 0\ncat/1.png 0\ndog/0.jpg 10\n\ndog/1.png 2\n")
    data = load_list_file(tmp_path / "train800.txt", image_size=8)
    assert data.class_names == ("0", "2", "10") and data.labels.tolist() == [0, 0, 2, 1]
    (tmp_path / "named.txt").write_text("cat/0.jpg cat\ndog/0.jpg dog\n")
    assert load_dataset(f"list:{tmp_path / 'named.txt'}", 8).class_names == ("cat", "dog")


@pytest.mark.parametrize("content, message", [
    ("../outside.png 0\n", "leaves the dataset folder"),
    ("cat/0.jpg\n", "path label"),
    ("cat/missing.png 0\n", "missing.png"),
    ("", "path label"),
])
def test_bad_list_files_fail_with_the_reason(tmp_path, content, message):
    write_folder(tmp_path / "data")
    (tmp_path / "outside.png").write_bytes(b"")
    (tmp_path / "data" / "list.txt").write_text(content)
    with pytest.raises(DatasetError, match=message):
        load_list_file(tmp_path / "data" / "list.txt", image_size=8)


def test_bad_folders_fail_with_the_reason(tmp_path):
    with pytest.raises(DatasetError, match="does not exist"):
        load_image_folder(tmp_path / "nothing", 8)
    write_folder(tmp_path / "one", counts=(("cat", 2),))
    with pytest.raises(DatasetError, match="at least two class folders"):
        load_image_folder(tmp_path / "one", 8)
    write_folder(tmp_path / "broken")
    (tmp_path / "broken" / "dog" / "bad.png").write_bytes(b"\x89PNG truncated")
    with pytest.raises(DatasetError, match="bad.png"):
        load_image_folder(tmp_path / "broken", 8)


def test_square_crop_keeps_the_centre():
    image = torch.zeros(3, 10, 40, dtype=torch.uint8)
    image[:, :, 18:22] = 255  # the crop keeps columns 15-24
    out = square_crop(image, 10)
    assert out.shape == (3, 10, 10) and out[:, :, 5].min() == 255 and out[:, :, 0].max() == 0
