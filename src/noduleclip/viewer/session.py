"""The viewer's state: the warm model, the open scans (a small LRU of volumes), and each scan's predicted nodules.

A scan is read once (`noduleclip.predict.sites.read_image`, as `noduleclip predict` reads it) and kept while it
is among the last `capacity` opened; its slices are windowed and PNG-encoded from memory on request. A click's
(column, row, slice) becomes world LPS millimetres through `AxialGeometry.to_world` (the volume's own
`index_to_world`), is checked and predicted as the CLI predicts a `--coord` (`locate_nodules`, `predict_sites`),
and its panel is drawn by `noduleclip.predict.panel.draw_panel` when the page first asks for it (the risk is
shown without waiting for matplotlib). The nodules of a scan outlive its volume's
place in the LRU. The model and matplotlib are not thread-safe: one lock serialises predicting and drawing.
"""

from __future__ import annotations

import io
import tempfile
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from noduleclip.errors import InputError
from noduleclip.io import Volume
from noduleclip.viewer.catalog import (
    Catalog,
    MarkedNodule,
    NotFound,
    ScanEntry,
    check_contained,
    marked_nodules,
    safe_path,
    scan_root,
)
from noduleclip.viewer.geometry import AxialGeometry, window_to_bytes

LUNG_WINDOW = (1500.0, -600.0)  # (width, level) HU
MEDIASTINAL_WINDOW = (350.0, 40.0)
DOWNLOADS = ("predictions.json", "predictions.csv", "structured_report.dcm")


def encode_png(pixels: np.ndarray) -> bytes:
    """An 8-bit grey image as PNG, compressed lightly (speed over size: it travels to a local browser)."""
    from PIL import Image  # imported on first use, as matplotlib's own dependency

    buffer = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(pixels), mode="L").save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


@dataclass
class OpenScan:
    """A scan read into memory, with its screen geometry and the nodules its manifests mark."""

    entry: ScanEntry
    volume: Volume
    geometry: AxialGeometry
    stack: np.ndarray  # [slice, row, column] view of the volume's array
    marked: list[MarkedNodule]
    marked_centres: dict[str, np.ndarray]  # nodule_id -> LPS centre (a mask's centroid computed at opening)


@dataclass
class NoduleResult:
    """One predicted nodule of a scan: the prediction, its panel PNG and where it came from."""

    prediction: object  # noduleclip.predict.api.NodulePrediction
    title: str  # the panel's title: the scan's name
    source: str  # "click" or the manifest's name
    screen: tuple[float, float, float]
    seconds: float
    panel_png: bytes | None = None  # drawn on first request: the risk is shown without waiting for matplotlib

    def to_dict(self) -> dict:
        p = self.prediction
        return {**p.to_dict(), "source": self.source, "screen": list(self.screen),  # type: ignore[attr-defined]
                "seconds": round(self.seconds, 3)}


@dataclass
class ScanNodules:
    results: OrderedDict[str, NoduleResult] = field(default_factory=OrderedDict)
    clicks: int = 0


class ViewerSession:
    """The model, the root's catalog, the open scans and their nodules, shared by every request."""

    def __init__(self, model, root: Path, capacity: int = 3):
        self.model, self.root, self.capacity = model, root, capacity
        self._catalog: Catalog | None = None
        self._scans: OrderedDict[tuple[str, str], OpenScan] = OrderedDict()
        self._nodules: dict[tuple[str, str], ScanNodules] = {}
        self._state_lock = threading.Lock()  # the LRU, the catalog and the nodule lists
        self._load_locks: dict[tuple[str, str], threading.Lock] = {}
        self.model_lock = threading.Lock()  # the fold ensemble and matplotlib

    # -- the catalog ---------------------------------------------------------------------------------------------

    def catalog(self, refresh: bool = False) -> Catalog:
        with self._state_lock:
            if self._catalog is None or refresh:
                self._catalog = scan_root(self.root)
            return self._catalog

    def entry(self, path: str, series_uid: str | None) -> ScanEntry:
        """The listed scan of that path (and series); refused or not found otherwise, before anything is read."""
        location = safe_path(self.root, path)
        entry = self.catalog().find(path, series_uid) or self.catalog(refresh=True).find(path, series_uid)
        if entry is None:
            check_contained(self.root, location, path)  # a folder with a link out is refused, not just "not found"
            several = [s for s in self.catalog().scans if s.path == path]
            if not series_uid and len(several) > 1:
                raise NotFound(f"{path} holds {len(several)} CT series; choose one of them from the list")
            what = f"series {series_uid} of {path}" if series_uid else path
            raise NotFound(f"{what} is not a CT scan the viewer lists under its root folder; pick one from the list")
        return entry

    # -- open scans ---------------------------------------------------------------------------------------------

    def open(self, path: str, series_uid: str | None = None) -> OpenScan:
        """The scan, read once and kept among the last `capacity` opened."""
        from noduleclip.predict.sites import read_image
        from noduleclip.preprocess.pipeline import nodule_center

        entry = self.entry(path, series_uid)
        key = entry.key
        with self._state_lock:
            if key in self._scans:
                self._scans.move_to_end(key)
                return self._scans[key]
            load_lock = self._load_locks.setdefault(key, threading.Lock())
        with load_lock:  # one read per scan, however many requests ask for it at once
            with self._state_lock:
                if key in self._scans:
                    return self._scans[key]
            location = safe_path(self.root, entry.path)
            check_contained(self.root, location, entry.path)
            volume = read_image(location, series_uid=entry.series_uid)
            geometry = AxialGeometry.of(volume)
            marked = marked_nodules(self.catalog(), entry)
            # as preprocessing places them: the given centre, else the mask's centroid, checked to lie inside
            centres = {nodule.nodule_id: nodule_center(volume, nodule.record) for nodule in marked}
            scan = OpenScan(entry, volume, geometry, geometry.stack(volume.array), marked, centres)
            with self._state_lock:
                self._scans[key] = scan
                while len(self._scans) > self.capacity:
                    self._scans.popitem(last=False)
                self._nodules.setdefault(key, ScanNodules())
            return scan

    def describe(self, scan: OpenScan) -> dict:
        """What the page needs to show a scan: its size, pixel size, slice positions, marked and predicted nodules."""
        g, volume = scan.geometry, scan.volume
        marked = []
        for nodule in scan.marked:
            centre = scan.marked_centres[nodule.nodule_id]
            marked.append({"nodule_id": nodule.nodule_id, "manifest": nodule.manifest, "label": nodule.label,
                           "center_lps": centre.tolist(), "screen": g.from_world(volume, centre).tolist()})
        width_mm, height_mm = g.pixel_mm(volume)
        return {
            **scan.entry.to_dict(), "columns": g.columns, "rows": g.rows, "slices": g.slices,
            "pixel_mm": [width_mm, height_mm], "slice_z": [round(z, 3) for z in g.slice_z(volume)],
            "slice_thickness_mm": float(volume.spacing[g.axes[2]]),
            "screen_to_world": self._affine(scan).tolist(),
            "is_dicom": volume.metadata.get("format") == "dicom", "marked": marked,
            "nodules": [r.to_dict() for r in self.results(scan.entry)],
            "windows": {"lung": list(LUNG_WINDOW), "mediastinal": list(MEDIASTINAL_WINDOW)},
        }

    @staticmethod
    def _affine(scan: OpenScan) -> np.ndarray:
        """3 x 4: world = A @ (column, row, slice, 1), for the page's cursor read-out (clicks go to the server)."""
        g, volume = scan.geometry, scan.volume
        origin = g.to_world(volume, 0, 0, 0)
        columns = [g.to_world(volume, *unit) - origin for unit in ((1, 0, 0), (0, 1, 0), (0, 0, 1))] \
            if min(g.size) > 1 else [np.zeros(3)] * 3
        return np.column_stack([*columns, origin])

    def slice_png(self, path: str, series_uid: str | None, index: int, width: float, level: float) -> bytes:
        scan = self.open(path, series_uid)
        if not 0 <= index < scan.geometry.slices:
            raise InputError(f"slice {index} is not in {path}, which has slices 0 to {scan.geometry.slices - 1}")
        return encode_png(window_to_bytes(scan.stack[index], width, level))

    # -- nodules ------------------------------------------------------------------------------------------------

    def results(self, entry: ScanEntry) -> list[NoduleResult]:
        with self._state_lock:
            return list(self._nodules.get(entry.key, ScanNodules()).results.values())

    def predict(self, path: str, series_uid: str | None, screen: tuple[float, float, float] | None = None,
                nodule_id: str | None = None) -> NoduleResult:
        """Predict the nodule at a screen position (a click) or a manifest's marked nodule; it joins the scan's list."""
        from noduleclip.predict.sites import locate_nodules

        started = time.perf_counter()
        scan = self.open(path, series_uid)
        volume, geometry = scan.volume, scan.geometry
        with self._state_lock:
            nodules = self._nodules.setdefault(scan.entry.key, ScanNodules())
        if nodule_id is not None:
            if nodule_id not in scan.marked_centres:
                raise NotFound(f"no manifest under the root marks a nodule {nodule_id!r} in {path}")
            centre = scan.marked_centres[nodule_id]
            source = next(n.manifest for n in scan.marked if n.nodule_id == nodule_id)
            screen = tuple(float(v) for v in geometry.from_world(volume, centre))
        elif screen is not None:
            centre = geometry.to_world(volume, *screen)
            source = "click"
        else:
            raise InputError("say which nodule to predict: a click's column, row and slice, or a marked nodule's id")
        sites = locate_nodules(volume, coords=[centre])
        with self._state_lock:
            if nodule_id is None:
                nodules.clicks += 1
                while f"n{nodules.clicks}" in nodules.results:
                    nodules.clicks += 1
                sites[0].nodule_id = f"n{nodules.clicks}"
            else:
                sites[0].nodule_id = nodule_id
        with self.model_lock:
            prediction = self.model.predict_sites(volume, sites)[0]
        result = NoduleResult(prediction, Path(scan.entry.path).name or ".", source, screen,
                              time.perf_counter() - started)
        with self._state_lock:
            nodules.results[prediction.nodule_id] = result
            nodules.results.move_to_end(prediction.nodule_id)
        return result

    def result(self, path: str, series_uid: str | None, nodule_id: str) -> NoduleResult:
        entry = self.entry(path, series_uid)
        with self._state_lock:
            found = self._nodules.get(entry.key, ScanNodules()).results.get(nodule_id)
        if found is None:
            raise NotFound(f"nodule {nodule_id!r} of {path} is not in the list (removed, or never predicted)")
        return found

    def panel_png(self, path: str, series_uid: str | None, nodule_id: str) -> bytes:
        """The nodule's panel (`noduleclip.predict.panel.draw_panel`), drawn once."""
        from noduleclip.predict.panel import draw_panel

        result = self.result(path, series_uid, nodule_id)
        with self.model_lock:
            if result.panel_png is None:
                with tempfile.TemporaryDirectory(prefix="noduleclip-viewer-") as folder:
                    result.panel_png = draw_panel(result.prediction, Path(folder) / "panel.png",
                                                  title=result.title).read_bytes()
        return result.panel_png

    def remove(self, path: str, series_uid: str | None, nodule_id: str) -> None:
        entry = self.entry(path, series_uid)
        with self._state_lock:
            results = self._nodules.get(entry.key, ScanNodules()).results
            if nodule_id not in results:
                raise NotFound(f"nodule {nodule_id!r} of {path} is not in the list (removed, or never predicted)")
            del results[nodule_id]

    def download(self, path: str, series_uid: str | None, name: str) -> bytes:
        """One file of `noduleclip predict`'s output for the scan's listed nodules, written by `write_outputs`."""
        from noduleclip.predict.outputs import write_outputs
        from noduleclip.predict.sr import require_dicom_source

        if name not in DOWNLOADS:
            raise NotFound(f"there is no download {name!r}; the downloads are {', '.join(DOWNLOADS)}")
        scan = self.open(path, series_uid)
        predictions = [r.prediction for r in self.results(scan.entry)]
        if not predictions:
            raise InputError(f"no nodules are listed for {path}; click a nodule to predict it first")
        sr = name == "structured_report.dcm"
        if sr:
            require_dicom_source(scan.volume)
        with self.model_lock, tempfile.TemporaryDirectory(prefix="noduleclip-viewer-") as folder:
            out = Path(folder) / "prediction"
            write_outputs(out, predictions, scan.volume, self.model, dicom_sr=sr)
            return (out / name).read_bytes()
