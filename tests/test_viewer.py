"""`noduleclip serve`: the viewer's API through FastAPI's TestClient (listing, slices and windows, a click's world
point on oblique and flipped scans, predictions that equal `NoduleClip.predict`, downloads, paths outside the root,
errors that leave the server running, the command's defaults) and the page in a real headless chromium.

The run is the session's tiny run (conftest.py `tiny_run`), read only; the scans are p00 of its cohort (copied
into this module's root folder, as NIfTI and as a DICOM series) and synthetic volumes written here."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pydicom
import pytest
from PIL import Image

from helpers import make_volume, write_ct_series, write_nifti_ras
from noduleclip.cli import main as cli_main
from noduleclip.io import Volume, read_volume, write_volume
from noduleclip.predict import NoduleClip
from noduleclip.predict.panel import PANEL_SIZE_PX, percent
from noduleclip.viewer import create_app
from noduleclip.viewer.geometry import AxialGeometry, window_to_bytes

NODULE_A, NODULE_B = (-8.0, -8.0, 0.0), (12.0, 8.0, 0.0)  # p00's nodules (LPS mm), as in test_predict.py
MARKER_HU = 3000.0
SHOTS = Path("/tmp/viewer-shots")


def oblique_volume() -> tuple[Volume, np.ndarray]:
    """A lung-like volume on a rotated grid whose slice axis is mirrored (det -1), with one bright voxel; and that
    voxel's world point from the volume's own `index_to_world`."""
    volume = make_volume(shape=(14, 40, 36), spacing=(0.8, 0.7, 2.0), angles=(10, -20, 30))
    volume.direction = volume.direction @ np.diag([1.0, 1.0, -1.0])
    i, j, k = 23, 11, 9
    volume.array[k, j, i] = MARKER_HU
    return volume, volume.index_to_world([i, j, k])


@pytest.fixture(scope="module")
def scans(tiny_cohort, tmp_path_factory) -> SimpleNamespace:
    """The viewer's root: p00 (NIfTI + manifest, and a DICOM copy), the oblique volume as RAS NIfTI and DICOM."""
    root = tmp_path_factory.mktemp("viewer-root")
    shutil.copy(tiny_cohort.data / "p00.nii.gz", root / "p00.nii.gz")
    p00 = read_volume(root / "p00.nii.gz")
    write_ct_series(p00, root / "p00-dicom")
    (root / "manifest.csv").write_text(
        "patient_id,nodule_id,image,coord_x,coord_y,coord_z,label\n"
        "P00,P00-0,p00.nii.gz,-8,-8,0,1\nP00,P00-1,p00.nii.gz,12,8,0,0\nP01,P01-0,elsewhere.nii.gz,0,0,0,1\n")
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")  # listed; opening it is refused
    volume, marker = oblique_volume()
    (root / "oblique").mkdir()
    write_nifti_ras(volume, root / "oblique" / "ras.nii")
    write_ct_series(volume, root / "oblique" / "dicom")
    return SimpleNamespace(root=root, p00=p00, marker=marker, series=pydicom.dcmread(
        next((root / "p00-dicom").iterdir())).SeriesInstanceUID)


@pytest.fixture(scope="module")
def model(tiny_run):
    return NoduleClip.load(tiny_run.run)


@pytest.fixture(scope="module")
def client(tiny_run, scans, model):
    from fastapi.testclient import TestClient

    app = create_app(tiny_run.run, scans.root, model=model, warm=False)
    return TestClient(app, raise_server_exceptions=False)


def slice_pixels(client, path: str, index: int, series: str | None = None, width=1500, level=-600) -> np.ndarray:
    response = client.get("/api/slice", params={"path": path, "index": index, "width": width, "level": level,
                                                **({"series": series} if series else {})})
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    return np.asarray(Image.open(io.BytesIO(response.content)))


def error_of(response, status: int) -> str:
    """The one-sentence error of a refused request (JSON, no traceback)."""
    assert response.status_code == status, response.text
    message = response.json()["error"]
    assert "Traceback" not in response.text and "\n" not in message
    return message


# -- what is listed, how it is shown --------------------------------------------------------------------------------

def test_the_root_lists_image_files_and_each_dicom_ct_series(client, scans, tmp_path):
    listing = client.get("/api/scans").json()
    by_path = {(s["path"], s["series_uid"]): s for s in listing["scans"]}
    assert set(by_path) == {("p00.nii.gz", None), ("broken.nii.gz", None), ("oblique/ras.nii", None),
                            ("p00-dicom", scans.series), ("oblique/dicom", _uid(scans.root / "oblique" / "dicom"))}
    assert by_path[("p00.nii.gz", None)]["nodules"] == 2  # the manifest's P00-0 and P00-1, not P01-0
    dicom = by_path[("p00-dicom", scans.series)]
    assert dicom["files"] == 32 and dicom["kind"] == "dicom" and "32 slices" in dicom["label"]


def _uid(folder: Path) -> str:
    return str(pydicom.dcmread(next(folder.iterdir()), stop_before_pixels=True).SeriesInstanceUID)


def test_every_format_and_two_series_in_one_folder(model, scans, tmp_path):
    from fastapi.testclient import TestClient

    root = tmp_path / "root"
    root.mkdir()
    for name in ("scan.mha", "scan.nrrd", "scan.mhd", "scan.nii.gz"):
        write_volume(scans.p00, root / name)
    write_ct_series(scans.p00, root / "two", series_uid="1.2.3.1", name_prefix="a")
    write_ct_series(scans.p00, root / "two", series_uid="1.2.3.2", name_prefix="b")
    (root / "notes.txt").write_text("not a scan")
    client = TestClient(create_app("unused", root, model=model, warm=False), raise_server_exceptions=False)
    listed = {(s["path"], s["series_uid"]) for s in client.get("/api/scans").json()["scans"]}
    assert listed == {("scan.mha", None), ("scan.nrrd", None), ("scan.mhd", None), ("scan.nii.gz", None),
                      ("two", "1.2.3.1"), ("two", "1.2.3.2")}
    reference = slice_pixels(client, "scan.nii.gz", 15)
    for path, series in sorted(listed - {("scan.nii.gz", None)}):
        assert np.array_equal(slice_pixels(client, path, 15, series), reference), path
    assert "holds 2 CT series" in error_of(client.get("/api/scan", params={"path": "two"}), 404)


def test_slices_are_shown_as_a_radiologist_reads():
    """Patient's right on the screen's left, anterior at the top, the head first, whatever the index axes' order."""
    sagittal = np.array([[0.0, 0.0, -1.0], [1.0, 0.0, 0.0], [0.0, -1.0, 0.0]])  # i: posterior, j: inferior, k: right
    for direction in (np.eye(3), np.diag([-1.0, -1.0, 1.0]), np.diag([1.0, 1.0, -1.0]), sagittal):
        volume = Volume(np.full((12, 14, 16), -800.0, np.float32), origin=(5.0, -3.0, 40.0), spacing=(0.7, 0.9, 1.5),
                        direction=direction)
        geometry = AxialGeometry.of(volume)
        centre = volume.center_world()
        offsets = {"centre": 0, "left": (4, 0, 0), "posterior": (0, 4, 0), "superior": (0, 0, 4)}
        for n, (_, offset) in enumerate(offsets.items()):
            index = np.round(volume.world_to_index(centre + np.asarray(offset))).astype(int)
            volume.array[index[2], index[1], index[0]] = 100.0 + n
        stack = geometry.stack(volume.array)
        at = {name: np.argwhere(stack == 100.0 + n)[0] for n, name in enumerate(offsets)}  # (slice, row, column)
        assert at["left"][2] > at["centre"][2] and at["left"][:2].tolist() == at["centre"][:2].tolist()
        assert at["posterior"][1] > at["centre"][1]
        assert at["superior"][0] < at["centre"][0]
        z = geometry.slice_z(volume)
        assert z == sorted(z, reverse=True)


@pytest.mark.parametrize("path", ["oblique/ras.nii", "oblique/dicom"])
def test_a_click_on_a_pixel_predicts_at_that_voxels_world_point(client, scans, path):
    """The bright voxel is found on the rendered slices; clicking it predicts at the point `Volume.index_to_world`
    gives for it (the volume written as RAS NIfTI and as a DICOM series, on a rotated grid mirrored along k)."""
    scan = client.get("/api/scan", params={"path": path}).json()
    series = scan["series_uid"]
    hits = [(s, *np.argwhere(pixels == 255)[0]) for s in range(scan["slices"])
            if (pixels := slice_pixels(client, path, s, series)).max() == 255]
    assert len(hits) == 1, hits  # one voxel over the lung window's top (150 HU): the marker
    slice_, row, column = (int(v) for v in hits[0])
    answer = client.post("/api/predict", json={"path": path, "series": series, "column": column, "row": row,
                                               "slice": slice_}).json()
    assert np.allclose(answer["center_lps"], scans.marker, atol=1e-3), (answer["center_lps"], scans.marker)
    assert answer["screen"] == [column, row, slice_]
    affine = np.asarray(scan["screen_to_world"])  # the page's cursor read-out agrees with the click
    assert np.allclose(affine @ [column, row, slice_, 1], scans.marker, atol=1e-3)
    assert abs(scan["slice_z"][slice_] - scans.marker[2]) < 40  # the centre's z of a tilted slice, not the voxel's


def test_lung_and_mediastinal_windows(client):
    """p00's nodule A is 40 HU in a -800 HU background: the lung window (1500/-600) and the mediastinal (350/40)."""
    assert window_to_bytes(np.array([-1350.0, -600.0, 150.0, 40.0]), 1500, -600).tolist() == [0, 128, 255, 236]
    lung = slice_pixels(client, "p00.nii.gz", 15)
    mediastinal = slice_pixels(client, "p00.nii.gz", 15, width=350, level=40)
    assert lung[12, 12] == 236 and mediastinal[12, 12] == 128  # (40 + 1350) / 1500 * 255 = 236.3; 127.5 rounds up
    background = np.s_[0:4, 28:32]
    assert mediastinal[background].max() == 0 and 60 < lung[background].mean() < 130
    assert "window width 0" in error_of(client.get("/api/slice", params={"path": "p00.nii.gz", "index": 3,
                                                                          "width": 0}), 400)


# -- predictions ----------------------------------------------------------------------------------------------------

def test_marked_and_clicked_nodules_predict_as_the_api_does(client, scans, model):
    scan = client.get("/api/scan", params={"path": "p00.nii.gz"}).json()
    marked = {n["nodule_id"]: n for n in scan["marked"]}
    assert set(marked) == {"P00-0", "P00-1"}
    assert marked["P00-0"]["screen"] == [12.0, 12.0, 15.0] and scan["slice_z"][15] == 0.0
    expected = [model.predict(scans.root / "p00.nii.gz", coords=[centre])[0] for centre in (NODULE_A, NODULE_B)]
    by_id = client.post("/api/predict", json={"path": "p00.nii.gz", "nodule_id": "P00-1"}).json()
    clicked = client.post("/api/predict", json={"path": "p00.nii.gz", "column": 12, "row": 12, "slice": 15}).json()
    assert clicked["nodule_id"] == "n1" and clicked["center_lps"] == list(NODULE_A) and clicked["source"] == "click"
    assert by_id["nodule_id"] == "P00-1" and by_id["source"] == "manifest.csv"
    for answer, ours in ((clicked, expected[0]), (by_id, expected[1])):
        assert answer["risk"] == ours.risk and answer["fold_risks"] == ours.fold_risks
        assert answer["semantics"] == ours.to_dict()["semantics"]
    panel = client.get("/api/panel", params={"path": "p00.nii.gz", "id": "n1"})
    assert Image.open(io.BytesIO(panel.content)).size == PANEL_SIZE_PX
    listed = client.get("/api/scan", params={"path": "p00.nii.gz"}).json()["nodules"]
    assert [n["nodule_id"] for n in listed] == ["P00-1", "n1"]
    removed = client.delete("/api/nodule", params={"path": "p00.nii.gz", "id": "n1"}).json()
    assert [n["nodule_id"] for n in removed["nodules"]] == ["P00-1"]
    assert "not in the list" in error_of(client.get("/api/panel", params={"path": "p00.nii.gz", "id": "n1"}), 404)
    client.delete("/api/nodule", params={"path": "p00.nii.gz", "id": "P00-1"})


def test_downloads_are_predicts_files_for_the_listed_nodules(client, scans):
    where = {"path": "p00-dicom", "series": scans.series}
    assert "no nodules are listed" in error_of(client.get("/api/download/predictions.json", params=where), 400)
    for column, row in ((12, 12), (22, 20)):
        assert client.post("/api/predict", json={**where, "column": column, "row": row, "slice": 15}).status_code == 200
    listed = client.get("/api/scan", params=where).json()["nodules"]
    document = client.get("/api/download/predictions.json", params=where)
    assert "attachment" in document.headers["content-disposition"]
    nodules = json.loads(document.content)["nodules"]
    assert [(n["nodule_id"], n["risk"]) for n in nodules] == [(n["nodule_id"], n["risk"]) for n in listed]
    assert [n["center_lps"] for n in nodules] == [list(NODULE_A), list(NODULE_B)]
    rows = client.get("/api/download/predictions.csv", params=where).text.splitlines()
    assert rows[0].startswith("nodule_id,center_x") and [r.split(",")[0] for r in rows[1:]] == ["n1", "n2"]
    report = pydicom.dcmread(io.BytesIO(client.get("/api/download/structured_report.dcm", params=where).content))
    assert report.Modality == "SR" and report.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    evidence = report.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
    assert evidence.SeriesInstanceUID == scans.series
    client.post("/api/predict", json={"path": "p00.nii.gz", "nodule_id": "P00-0"})
    assert "DICOM SR needs a DICOM source" in error_of(
        client.get("/api/download/structured_report.dcm", params={"path": "p00.nii.gz"}), 400)
    assert "no download" in error_of(client.get("/api/download/secrets.txt", params={"path": "p00.nii.gz"}), 404)


# -- safety and errors ----------------------------------------------------------------------------------------------

def test_nothing_outside_the_root_can_be_opened(model, scans, tmp_path):
    from fastapi.testclient import TestClient

    outside, root = tmp_path / "outside", tmp_path / "root"
    outside.mkdir()
    root.mkdir()
    secret = write_volume(scans.p00, outside / "secret.nii.gz")
    write_ct_series(scans.p00, outside / "series")
    shutil.copy(scans.root / "p00.nii.gz", root / "inside.nii.gz")
    (root / "link.nii.gz").symlink_to(secret)
    (root / "linked-folder").symlink_to(outside)
    write_ct_series(scans.p00, root / "mixed")
    first = sorted((root / "mixed").iterdir())[0]
    first.unlink()
    first.symlink_to(next((outside / "series").iterdir()))  # one slice of the series lies outside
    write_volume(scans.p00, outside / "data.mhd")
    raw = next(p for p in outside.iterdir() if p.suffix in (".raw", ".zraw"))
    (root / "header.mhd").write_text((outside / "data.mhd").read_text().replace(
        f"ElementDataFile = {raw.name}", f"ElementDataFile = ../outside/{raw.name}"))
    client = TestClient(create_app("unused", root, model=model, warm=False), raise_server_exceptions=False)
    listed = {s["path"] for s in client.get("/api/scans").json()["scans"]}
    assert "link.nii.gz" not in listed and not any(p.startswith("linked-folder") for p in listed)
    refusals = {
        "../outside/secret.nii.gz": "climbs out with '..'", "inside.nii.gz/../../outside/secret.nii.gz": "'..'",
        str(secret): "is absolute", "link.nii.gz": "leads outside", "linked-folder/secret.nii.gz": "leads outside",
        "mixed": "a link to a file outside", "header.mhd": "reads its voxels from ../outside",
    }
    for path, words in refusals.items():
        for request in (client.get("/api/scan", params={"path": path}),
                        client.get("/api/slice", params={"path": path, "index": 0}),
                        client.post("/api/predict", json={"path": path, "column": 1, "row": 1, "slice": 1})):
            assert words in error_of(request, 403), path
    assert client.get("/api/slice", params={"path": "inside.nii.gz", "index": 0}).status_code == 200
    assert client.post("/upload", content=b"x").status_code in (404, 405)


def test_errors_are_one_sentence_and_the_server_goes_on(model, scans, tmp_path, monkeypatch, caplog):
    from fastapi.testclient import TestClient

    root = tmp_path / "root"
    root.mkdir()
    shutil.copy(scans.root / "p00.nii.gz", root / "good.nii.gz")
    (root / "broken.nii.gz").write_bytes(b"\x1f\x8b not really gzip")
    write_volume(Volume(np.full((8, 8, 8), 400.0, np.float32), (0, 0, 0), (1, 1, 1)), root / "mr.nii.gz")
    app = create_app("unused", root, model=model, warm=False)
    client = TestClient(app, raise_server_exceptions=False)
    good = {"path": "good.nii.gz"}
    assert "truncated" in error_of(client.get("/api/scan", params={"path": "broken.nii.gz"}), 400)
    assert "does not look like CT" in error_of(client.get("/api/scan", params={"path": "mr.nii.gz"}), 400)
    assert "outside the 32 x 32 x 32 scan" in error_of(
        client.post("/api/predict", json={**good, "column": 40, "row": 3, "slice": 3}), 400)
    assert "slices 0 to 31" in error_of(client.get("/api/slice", params={**good, "index": 32}), 400)
    assert "say which nodule" in error_of(client.post("/api/predict", json={**good, "column": 3}), 400)
    assert "not valid" in error_of(client.post("/api/predict", content=b"{not json",
                                               headers={"content-type": "application/json"}), 400)
    assert "not in the list" in error_of(client.delete("/api/nodule", params={**good, "id": "n9"}), 404)
    monkeypatch.setattr(app.state.session, "slice_png", lambda *a: 1 / 0)
    assert error_of(client.get("/api/slice", params={**good, "index": 1}), 500).startswith(
        "internal error (ZeroDivisionError)")
    monkeypatch.undo()
    assert client.get("/api/slice", params={**good, "index": 1}).status_code == 200
    assert client.post("/api/predict", json={**good, "column": 12, "row": 12, "slice": 15}).json()["risk"] > 0


def test_scans_stay_open_in_a_small_lru(model, scans, tmp_path, monkeypatch):
    from fastapi.testclient import TestClient

    import noduleclip.predict.sites as sites

    root = tmp_path / "root"
    root.mkdir()
    for n in range(3):
        shutil.copy(scans.root / "p00.nii.gz", root / f"s{n}.nii.gz")
    reads = []
    original = sites.read_image
    monkeypatch.setattr(sites, "read_image", lambda *a, **k: reads.append(a[0]) or original(*a, **k))
    client = TestClient(create_app("unused", root, model=model, warm=False, capacity=2))
    for path in ("s0", "s1", "s0", "s0", "s1", "s2", "s0"):
        for index in (0, 5):
            slice_pixels(client, f"{path}.nii.gz", index)
    assert [Path(p).stem.split(".")[0] for p in reads] == ["s0", "s1", "s2", "s0"]  # s0 fell out when s2 came in


# -- the command ----------------------------------------------------------------------------------------------------

def test_serve_binds_to_this_machine_unless_told(tiny_run, scans, monkeypatch, capsys):
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: calls.append((app, options)))
    assert cli_main(["serve", str(tiny_run.run), "--root", str(scans.root), "--port", "8123"]) == 0
    assert calls[0][1]["host"] == "127.0.0.1" and calls[0][1]["port"] == 8123
    assert "http://127.0.0.1:8123/" in capsys.readouterr().out
    assert cli_main(["serve", str(tiny_run.run), "--root", str(scans.root / "missing")]) == 2
    assert "is not a folder" in capsys.readouterr().err
    assert cli_main(["serve", str(scans.root), "--root", str(scans.root)]) == 2  # not a run folder
    assert "error:" in capsys.readouterr().err and len(calls) == 1


# -- the page in a real browser -------------------------------------------------------------------------------------

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
DRIVER = shutil.which("chromedriver") or ("/usr/bin/chromedriver" if os.path.exists("/usr/bin/chromedriver") else None)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def server(tiny_run, scans, model):
    """uvicorn in a thread on a free port, serving the module's root."""
    import uvicorn

    port = _free_port()
    server = uvicorn.Server(uvicorn.Config(create_app(tiny_run.run, scans.root, model=model), host="127.0.0.1",
                                           port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the viewer did not start"
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


@pytest.mark.skipif(CHROMIUM is None or DRIVER is None,
                    reason="chromium or its driver is not installed (apt-get install chromium chromium-driver)")
def test_the_page_in_headless_chromium(server, model, scans, tmp_path):
    webdriver = pytest.importorskip("selenium.webdriver")
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.actions.wheel_input import ScrollOrigin
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1600,1300", f"--user-data-dir={tmp_path / 'profile'}"):
        options.add_argument(argument)
    driver = webdriver.Chrome(service=Service(DRIVER), options=options)
    SHOTS.mkdir(parents=True, exist_ok=True)

    def shot(name: str) -> None:
        driver.save_screenshot(str(tmp_path / name))
        shutil.copy(tmp_path / name, SHOTS / name)

    wait = WebDriverWait(driver, 20)
    text = lambda element_id: driver.find_element(By.ID, element_id).text  # noqa: E731
    shown_slice = lambda: int(driver.find_element(By.ID, "slice-info").get_attribute("data-index"))  # noqa: E731
    loaded = ("return document.getElementById('slice').complete && document.getElementById('slice').naturalWidth > 0 "
              "&& document.getElementById('slice').src")
    try:
        driver.get(server)
        wait.until(lambda d: d.find_elements(By.CSS_SELECTOR, '#scan-list li[data-path="p00.nii.gz"]'))
        driver.find_element(By.CSS_SELECTOR, '#scan-list li[data-path="p00.nii.gz"]').click()
        wait.until(lambda d: "Slice 16 / 32" in text("slice-info") and d.execute_script(loaded))  # the marked slice
        assert "z = 0.0 mm" in text("slice-info") and "W 1500  L -600" in text("window-info")
        assert len(driver.find_elements(By.CSS_SELECTOR, "#marked-list li")) == 2
        shot("1-opened-lung-window.png")

        viewport = driver.find_element(By.ID, "viewport")
        ActionChains(driver).scroll_from_origin(ScrollOrigin.from_element(viewport), 0, 300).perform()
        wait.until(lambda d: shown_slice() > 15)
        after_wheel = shown_slice()
        assert f"Slice {after_wheel + 1} / 32" in text("slice-info")
        assert driver.find_element(By.ID, "slice").get_attribute("src").endswith(f"index={after_wheel}&width=1500"
                                                                                 "&level=-600")
        scrollbar = driver.find_element(By.ID, "scrollbar")
        scrollbar.send_keys(Keys.HOME)
        wait.until(lambda d: shown_slice() == 0 and d.execute_script(loaded))
        assert "z = 30.0 mm" in text("slice-info") and scrollbar.get_attribute("value") == "0"
        shot("2-scrolled-to-the-top.png")
        ActionChains(driver).move_to_element_with_offset(scrollbar, 0, scrollbar.rect["height"] // 4).click().perform()
        wait.until(lambda d: 16 < shown_slice() < 31)  # a click three quarters down the bar
        assert scrollbar.get_attribute("value") == str(shown_slice()) and driver.execute_script(loaded)

        driver.find_element(By.CSS_SELECTOR, '#marked-list li[data-nodule="P00-1"]').click()  # go to its slice
        wait.until(lambda d: shown_slice() == 15 and d.execute_script(loaded))
        image = driver.find_element(By.ID, "slice")
        box = image.rect
        offset = lambda c, n, size: int((c + 0.5) / n * size - size / 2)  # noqa: E731  (from the element's centre)
        # nodule B (12, 8, 0) lies at column 22, row 20 of slice 15: click it one voxel right of its centre
        ActionChains(driver).move_to_element_with_offset(image, offset(23, 32, box["width"]),
                                                         offset(20, 32, box["height"])).click().perform()
        wait.until(lambda d: d.find_element(By.ID, "risk").is_displayed() and text("risk"))
        assert "n1" in text("result-id")
        expected = model.predict(scans.root / "p00.nii.gz", coords=[(14.0, 8.0, 0.0)])[0]
        assert text("risk") == percent(expected.risk)
        assert "calibrated (platt)" in text("calibration") or "UNCALIBRATED" in text("calibration")
        wait.until(lambda d: d.execute_script("return document.getElementById('panel').naturalWidth") > 0)
        assert driver.execute_script("return document.getElementById('panel').naturalWidth") == PANEL_SIZE_PX[0]
        assert len(driver.find_elements(By.CSS_SELECTOR, "#semantics tr")) == len(expected.semantics)
        shot("3-nodule-predicted.png")

        driver.find_element(By.ID, "win-mediastinal").click()
        wait.until(lambda d: "W 350  L 40" in text("window-info") and d.execute_script(loaded)
                   and "width=350" in d.find_element(By.ID, "slice").get_attribute("src"))
        driver.find_element(By.CSS_SELECTOR, '#marked-list li[data-nodule="P00-0"] button').click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#nodule-list li[data-nodule]")) == 2)
        wait.until(lambda d: "P00-0" in text("result-id"))
        assert text("risk") == percent(model.predict(scans.root / "p00.nii.gz", coords=[NODULE_A])[0].risk)
        shot("4-two-nodules-mediastinal-window.png")

        driver.find_element(By.CSS_SELECTOR, '#nodule-list li[data-nodule="P00-0"] button.remove').click()
        wait.until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#nodule-list li[data-nodule]")) == 1)
        assert not driver.find_element(By.ID, "result").is_displayed()
        driver.find_element(By.CSS_SELECTOR, '#scan-list li[data-path="broken.nii.gz"]').click()
        wait.until(lambda d: d.find_element(By.ID, "error").is_displayed())
        assert "truncated" in text("error-text") and "Traceback" not in text("error-text")
        shot("5-one-nodule-left-and-an-error.png")
        driver.find_element(By.CSS_SELECTOR, '#nodule-list li[data-nodule="n1"]').click()  # the server goes on
        wait.until(lambda d: "n1" in text("result-id") and text("risk") == percent(expected.risk))
        errors = [e for e in driver.get_log("browser") if e["level"] == "SEVERE" and "/api/" not in e["message"]]
        assert not errors, errors
    finally:
        driver.quit()
