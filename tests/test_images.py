import cv2
import numpy as np
import pytest

from segvlad_edge.runtime.inputs.images import ImageError, list_images, load_image


def test_good_and_bad_files(tmp_path):
    img = np.random.default_rng(0).integers(0, 255, (30, 40, 3), dtype=np.uint8)
    cv2.imwrite(str(tmp_path / "ok.png"), img)
    cv2.imwrite(str(tmp_path / "grey.png"), img[..., 0])
    cv2.imwrite(str(tmp_path / "deep.png"), (img.astype(np.uint16) * 257))
    cv2.imwrite(str(tmp_path / "rgba.png"), np.dstack([img, img[..., :1]]))
    (tmp_path / "ünï cödé name.png").write_bytes((tmp_path / "ok.png").read_bytes())
    for name in ("ok.png", "grey.png", "deep.png", "rgba.png", "ünï cödé name.png"):
        out = load_image(tmp_path / name)
        assert out.shape == (30, 40, 3) and out.dtype == np.uint8, name
    (tmp_path / "empty.jpg").write_bytes(b"")
    (tmp_path / "text.jpg").write_text("hello")
    for name, why in (("empty.jpg", "empty"), ("text.jpg", "not a readable image"), ("missing.jpg", "cannot read")):
        with pytest.raises(ImageError, match=why):
            load_image(tmp_path / name)
    names = [p.name for p in list_images(tmp_path)]
    assert names == sorted(names) and "ok.png" in names and "text.jpg" in names


def test_symlink_loop_does_not_hang(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "loop").symlink_to(tmp_path, target_is_directory=True)
    cv2.imwrite(str(tmp_path / "a" / "x.png"), np.zeros((4, 4, 3), np.uint8))
    assert [p.name for p in list_images(tmp_path)] == ["x.png"]


def test_camera_formats_are_converted(tmp_path):
    """CMYK JPEG, EXIF-rotated JPEG, tiny and huge images decode to 8-bit BGR (rotated, reduced)."""
    import io

    from PIL import Image

    half = np.zeros((20, 40, 3), np.uint8)
    half[:, :20] = 255
    buf = io.BytesIO()
    Image.fromarray(half).convert("CMYK").save(buf, "JPEG")
    (tmp_path / "cmyk.jpg").write_bytes(buf.getvalue())
    out = load_image(tmp_path / "cmyk.jpg")
    assert out.shape == (20, 40, 3) and out[10, 5].min() > 200 and out[10, 35].max() < 50
    im = Image.fromarray(half)
    exif = im.getexif()
    exif[0x0112] = 6                                     # "rotate 90 CW to display"
    buf = io.BytesIO()
    im.save(buf, "JPEG", exif=exif)
    (tmp_path / "rotated.jpg").write_bytes(buf.getvalue())
    assert load_image(tmp_path / "rotated.jpg").shape == (40, 20, 3)
    cv2.imwrite(str(tmp_path / "tiny.png"), np.full((10, 10, 3), 77, np.uint8))
    assert load_image(tmp_path / "tiny.png").shape == (10, 10, 3)
    big = np.zeros((9000, 12000, 3), np.uint8)
    big[::50] = 255
    cv2.imwrite(str(tmp_path / "huge.jpg"), big)
    del big
    out = load_image(tmp_path / "huge.jpg")
    assert out.shape[0] * out.shape[1] <= 40_000_000 and out.shape[1] / out.shape[0] == pytest.approx(12000 / 9000)


def test_truncated_jpeg_is_refused_with_a_reason(tmp_path):
    ok, buf = cv2.imencode(".jpg", np.random.default_rng(0).integers(0, 255, (200, 300, 3), dtype=np.uint8))
    (tmp_path / "cut.jpg").write_bytes(buf.tobytes()[: len(buf) // 2])
    with pytest.raises(ImageError, match="cut.jpg: not a readable image"):
        load_image(tmp_path / "cut.jpg")
