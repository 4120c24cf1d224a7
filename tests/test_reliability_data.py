"""Data reliability: every image mode becomes the right RGB, bad items are skipped and counted, and
whole-file errors are one ``HeadflowError`` line naming the file and the fix."""

from __future__ import annotations

import errno
import io
import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from headflow.data import FolderDataset, export_folder, load_dataset
from headflow.data.base import ALPHA_BACKGROUND, decode_image, to_rgb
from headflow.errors import HeadflowError, MissingFileError, WriteError


def _png(image: Image.Image, **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, "PNG", **kw)
    return buf.getvalue()


# -- image modes ---------------------------------------------------------------------------------

def test_sixteen_bit_grey_is_scaled_not_clipped_to_white():
    values = np.array([[0, 257, 32896], [40000, 65280, 65535]], np.uint16)
    data = _png(Image.fromarray(values))
    assert Image.open(io.BytesIO(data)).mode == "I;16"
    rgb = np.asarray(decode_image(data))
    assert rgb.shape == (2, 3, 3) and np.array_equal(rgb[..., 0], [[0, 1, 128], [156, 254, 255]])
    assert np.array_equal(rgb[..., 0], rgb[..., 2])
    as_i = Image.fromarray(values.astype(np.int32))  # mode "I" (what older Pillow returns for 16-bit PNG)
    assert as_i.mode == "I" and np.array_equal(np.asarray(to_rgb(as_i))[..., 1], rgb[..., 1])
    floats = Image.fromarray(np.array([[0.0, 0.5, 1.0]], np.float32))
    assert np.asarray(to_rgb(floats))[0, :, 0].tolist() == [0, 128, 255]


def test_transparency_is_composited_on_the_background():
    rgba = np.zeros((1, 2, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 0)  # fully transparent red: must not show as red
    rgba[0, 1] = (0, 0, 255, 255)
    out = np.asarray(decode_image(_png(Image.fromarray(rgba, "RGBA"))))
    assert out[0, 0].tolist() == list(ALPHA_BACKGROUND) and out[0, 1].tolist() == [0, 0, 255]
    la = Image.fromarray(np.array([[[10, 0], [200, 255]]], np.uint8), "LA")
    assert np.asarray(decode_image(_png(la)))[0].tolist() == [list(ALPHA_BACKGROUND), [200, 200, 200]]
    pal = Image.new("P", (2, 1))
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.putpixel((0, 0), 0)
    pal.putpixel((1, 0), 1)
    out = np.asarray(decode_image(_png(pal, transparency=0)))  # index 0 (black) is transparent
    assert out[0].tolist() == [list(ALPHA_BACKGROUND), [0, 255, 0]]
    grey = Image.fromarray(np.array([[0, 90]], np.uint8), "L")
    assert np.asarray(decode_image(_png(grey, transparency=0)))[0].tolist() == [list(ALPHA_BACKGROUND), [90] * 3]


def test_cmyk_one_bit_and_palette_without_transparency():
    cmyk = Image.new("CMYK", (2, 1))
    cmyk.putpixel((0, 0), (255, 0, 0, 0))  # pure cyan
    cmyk.putpixel((1, 0), (0, 0, 0, 0))
    buf = io.BytesIO()
    cmyk.save(buf, "TIFF")
    assert np.asarray(decode_image(buf.getvalue()))[0].tolist() == [[0, 255, 255], [255, 255, 255]]
    bits = Image.fromarray(np.array([[True, False]]))
    assert bits.mode == "1" and np.asarray(decode_image(_png(bits)))[0].tolist() == [[255] * 3, [0] * 3]
    pal = Image.new("P", (1, 1))
    pal.putpalette([12, 34, 56] + [0] * 765)
    assert np.asarray(decode_image(_png(pal)))[0, 0].tolist() == [12, 34, 56]


def test_exif_rotated_jpeg_is_upright():
    im = Image.new("RGB", (40, 20), (250, 250, 250))
    im.paste((0, 0, 0), (0, 0, 20, 20))  # left half black
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif, quality=95)
    out = decode_image(buf.getvalue())
    assert out.size == (20, 40)
    arr = np.asarray(out).mean(2)
    assert arr[:15].mean() < 60 and arr[25:].mean() > 200  # stored left half is now the top


# -- per-item problems: skipped and counted --------------------------------------------------------

def test_folder_counts_bad_rows_of_every_kind(tmp_path):
    (tmp_path / "img").mkdir()
    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "img" / "ok.png")
    Image.fromarray(np.full((8, 8), 60000, np.uint16)).save(tmp_path / "img" / "deep.png")
    Image.new("RGBA", (8, 8), (9, 9, 9, 0)).save(tmp_path / "img" / "alpha.png")
    full = _png(Image.new("RGB", (64, 64), (5, 5, 5)))
    (tmp_path / "img" / "cut.png").write_bytes(full[: len(full) // 2])  # truncated
    lines = [
        json.dumps({"image": "img/ok.png", "label": "dog"}),
        json.dumps({"image": "img/deep.png", "label": "cat"}),
        json.dumps({"image": "img/alpha.png", "label": "fox"}),
        json.dumps({"image": "img/cut.png", "label": "dog"}),
        json.dumps({"image": "img/ok.png", "label": "   "}),
        json.dumps({"image": "img/ok.png"}),
        json.dumps(["img/ok.png", "dog"]),
        json.dumps({"label": "dog"}),
        json.dumps(7),
    ]
    (tmp_path / "manifest.jsonl").write_text("\n".join(lines) + "\n")
    ds = load_dataset(f"folder:{tmp_path}")
    assert [e.label for e in ds] == ["dog", "cat", "fox"]
    assert ds.problems == {"bad_manifest_row": 3, "missing_label": 2, "unreadable_image": 1}
    assert np.asarray(ds[1].image)[0, 0].tolist() == [233] * 3  # 60000 / 257, not clipped to 255
    assert np.asarray(ds[2].image)[0, 0].tolist() == list(ALPHA_BACKGROUND)


def test_csv_rows_with_extra_fields_or_no_label(tmp_path):
    (tmp_path / "a.png").write_bytes(_png(Image.new("RGB", (4, 4))))
    (tmp_path / "manifest.csv").write_text("image,label\na.png,dog\na.png,dog,extra\na.png\n,dog\n")
    ds = FolderDataset(tmp_path)
    assert len(ds) == 1 and ds.factor_names == []
    assert ds.problems == {"bad_manifest_row": 2, "missing_label": 1}


# -- whole-file errors: one line -------------------------------------------------------------------

def test_manifest_errors_are_one_line(tmp_path):
    (tmp_path / "manifest.jsonl").write_text('{"image": "a.png", "label": "dog"}\n{"image": "b.png",\n')
    with pytest.raises(HeadflowError, match=r"manifest.jsonl' line 2 is not valid JSON \(Expecting property name "
                                            r"enclosed in double quotes at column 19\)\. Each line must be one JSON"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "manifest.jsonl").unlink()
    (tmp_path / "manifest.csv").write_bytes("image,label\nb.png,caf\u00e9\n".encode("latin-1"))
    with pytest.raises(HeadflowError, match=r"manifest.csv' is not UTF-8 text \(byte 0xe9 at position 21\)\. "
                                            "Save it as UTF-8"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "manifest.csv").write_text("path,label\nb.png,dog\n")
    with pytest.raises(HeadflowError, match=r"has no 'image' column \(columns: \['path', 'label'\]\)"):
        load_dataset(f"folder:{tmp_path}")
    (tmp_path / "manifest.csv").write_text("\ufeffimage,label\n")  # a BOM (Excel) is fine
    assert len(load_dataset(f"folder:{tmp_path}")) == 0
    with pytest.raises(MissingFileError, match="does not exist. Check the path after 'folder:'"):
        load_dataset(f"folder:{tmp_path / 'nope'}")
    with pytest.raises(HeadflowError, match="is a file, not a folder"):
        load_dataset(f"folder:{tmp_path / 'manifest.csv'}")


def test_coco_file_errors(tmp_path):
    pytest.importorskip("pycocotools")
    (tmp_path / "images").mkdir()
    with pytest.raises(MissingFileError, match=r"COCO annotation file '.*missing.json' does not exist\. Use 'coco:"):
        load_dataset(f"coco:{tmp_path / 'missing.json'}:{tmp_path / 'images'}")
    with pytest.raises(HeadflowError, match="is a folder, not a file"):
        load_dataset(f"coco:{tmp_path / 'images'}:{tmp_path / 'images'}")
    (tmp_path / "bad.json").write_text('{"images": [')
    with pytest.raises(HeadflowError, match=r"bad.json' is not a COCO instances file \(Expecting value: line 1 "
                                            r"column 13 \(char 12\)\)\. Use an instances_\*.json"):
        load_dataset(f"coco:{tmp_path / 'bad.json'}:{tmp_path / 'images'}")
    with pytest.raises(MissingFileError, match="COCO image folder .* does not exist"):
        load_dataset(f"coco:{tmp_path / 'bad.json'}:{tmp_path / 'nope'}")


def test_hf_missing_folder_and_split_errors(tmp_path):
    datasets = pytest.importorskip("datasets")
    with pytest.raises(MissingFileError, match="that folder does not exist. Check the path after 'hf:'"):
        load_dataset(f"hf:{tmp_path / 'nope'}")
    with pytest.raises(MissingFileError, match="that folder does not exist"):
        load_dataset("hf:./no/such/folder")
    ds = datasets.Dataset.from_dict({"image": [Image.new("RGB", (4, 4))], "label": ["dog"]},
                                    features=datasets.Features({"image": datasets.Image(),
                                                                "label": datasets.Value("string")}))
    ds.save_to_disk(str(tmp_path / "single"))
    assert len(load_dataset(f"hf:{tmp_path / 'single'}")) == 1
    with pytest.raises(HeadflowError, match="has no splits, so split 'validation' does not exist"):
        load_dataset(f"hf:{tmp_path / 'single'}:validation")
    datasets.DatasetDict({"train": ds}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(HeadflowError, match=r"has splits \['train'\]; got 'test'\. Use 'hf:.*:train'"):
        load_dataset(f"hf:{tmp_path / 'dict'}:test")
    (tmp_path / "file").write_text("x")
    with pytest.raises(HeadflowError, match="is a file, not a folder"):
        load_dataset(f"hf:{tmp_path / 'file'}")


# -- export ----------------------------------------------------------------------------------------

def test_export_into_a_file_or_a_full_disk(tmp_path, monkeypatch):
    data = load_dataset("default", n=2)
    (tmp_path / "file").write_text("keep")
    with pytest.raises(HeadflowError, match=r"Cannot export to '.*file': it is a file, not a folder"):
        export_folder(data, tmp_path / "file")
    with pytest.raises(WriteError, match=r"Cannot write .*file/sub/images: .*file is a file, not a directory"):
        export_folder(data, tmp_path / "file" / "sub")
    assert (tmp_path / "file").read_text() == "keep"
    root = export_folder(data, tmp_path / "out")
    before = {p: p.read_bytes() for p in root.rglob("*") if p.is_file()}

    def full(self, fp, format=None, **params):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Image.Image, "save", full)
    with pytest.raises(WriteError, match=r"Cannot write .*\.png: no space left on device"):
        export_folder(load_dataset("default", n=2, seed=5), root)
    assert {p: p.read_bytes() for p in root.rglob("*") if p.is_file()} == before  # old export intact


def test_data_cli_export_errors_exit_2(tmp_path):
    from typer.testing import CliRunner

    from headflow.data.cli import data_app

    (tmp_path / "file").write_text("x")
    result = CliRunner().invoke(data_app, ["export", str(tmp_path / "file"), "--n", "1"])
    assert result.exit_code == 2 and "it is a file, not a folder" in result.output
    assert "Traceback" not in result.output
