"""The viewer's web app: `create_app(run, root)` loads the run once and serves the page and its JSON/PNG API.

    GET  /                                  the page (static HTML, JavaScript and CSS from the package, offline)
    GET  /api/info                          the run: model card line, calibration, notes
    GET  /api/scans[?refresh=1]             the CT series and image files under the root, and what could not be read
    GET  /api/scan?path=P[&series=UID]      open a scan: size, pixel size, slice z, marked and predicted nodules
    GET  /api/slice?path=P&index=K&width=W&level=L[&series=UID]   one axial slice as a windowed PNG
    POST /api/predict {path, series, column, row, slice} | {path, series, nodule_id}   predict a nodule
    GET  /api/panel?path=P&id=N[&series=UID]   the nodule's panel PNG (nine views with attention, risk, profile)
    DELETE /api/nodule?path=P&id=N[&series=UID]   remove it from the list
    GET  /api/download/{predictions.json|predictions.csv|structured_report.dcm}?path=P[&series=UID]

Every `NoduleClipError` (what the CLI reports in one sentence) becomes `{"error": "..."}` with status 400 (403
for a path outside the root, 404 for what is not there); anything else is 500 with one line, the traceback going
to the server's log only. The server keeps serving either way.
"""

from __future__ import annotations

import logging
import os
import re
from importlib import resources
from pathlib import Path

import numpy as np
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel

from noduleclip.errors import InputError, NoduleClipError
from noduleclip.viewer.catalog import image_suffix
from noduleclip.viewer.session import ViewerSession

LOG = logging.getLogger("noduleclip.viewer")
MEDIA_TYPES = {"predictions.json": "application/json", "predictions.csv": "text/csv",
               "structured_report.dcm": "application/dicom"}


class PredictRequest(BaseModel):
    path: str
    series: str | None = None
    column: float | None = None
    row: float | None = None
    slice: float | None = None
    nodule_id: str | None = None


def static_folder() -> Path:
    return Path(str(resources.files("noduleclip.viewer") / "static"))


def warm_up(model) -> None:
    """One prediction and one panel on blank views, so that the first click pays no first-call costs."""
    import tempfile

    from noduleclip.predict.panel import draw_panel
    from noduleclip.predict.sites import NoduleSite

    size = model.views.size
    views = np.full((1, 9, size, size), 0.1, dtype=np.float32)
    prediction = model.predict_views(views, [NoduleSite("warm-up", np.zeros(3), "warm-up")])[0]
    with tempfile.TemporaryDirectory(prefix="noduleclip-viewer-") as folder:
        draw_panel(prediction, Path(folder) / "warm-up.png")


def create_app(run: str | os.PathLike, root: str | os.PathLike, model=None, capacity: int = 3,
               warm: bool = True) -> FastAPI:
    """The viewer for the scans under `root`, predicting with the trained `run` (loaded here once, or `model`)."""
    root_path = Path(root).expanduser()
    if not root_path.is_dir():
        raise InputError(f"--root {root} is not a folder; give the folder that holds the CT scans to show")
    root_path = root_path.resolve()
    if model is None:
        from noduleclip.predict.api import NoduleClip
        from noduleclip.run_folder import check_run_complete

        check_run_complete(run)
        model = NoduleClip.load(run)
    if warm:
        warm_up(model)
    session = ViewerSession(model, root_path, capacity=capacity)
    app = FastAPI(title="noduleclip viewer", docs_url=None, redoc_url=None, openapi_url=None)
    app.state.session = session

    @app.exception_handler(NoduleClipError)
    async def user_error(request: Request, exc: NoduleClipError) -> JSONResponse:
        message = str(exc).replace(f"{root_path}{os.sep}", "")  # paths as the page names them: under the root
        return JSONResponse({"error": message}, status_code=getattr(exc, "status", 400))

    @app.exception_handler(RequestValidationError)
    async def bad_request(request: Request, exc: RequestValidationError) -> JSONResponse:
        problems = "; ".join(f"{'.'.join(str(p) for p in e.get('loc', ()) if p not in ('query', 'body'))}: "
                             f"{e.get('msg', 'invalid')}" for e in exc.errors())
        return JSONResponse({"error": f"the request is not valid ({problems})"}, status_code=400)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, exc: Exception) -> JSONResponse:
        LOG.error("viewer: %s %s failed", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"error": f"internal error ({type(exc).__name__}); the server log has the details"},
                            status_code=500)

    @app.get("/", include_in_schema=False)
    def index() -> FileResponse:
        return FileResponse(static_folder() / "index.html", headers={"Cache-Control": "no-cache"})

    app.mount("/static", StaticFiles(directory=static_folder()), name="static")

    @app.get("/api/info")
    def info() -> dict:
        from noduleclip.run_folder import model_card_summary

        card = model_card_summary(model.run) if model.run is not None else None
        return {"run": Path(model.run).name, "card": card, "backbone": model.config.backbone,
                "calibration": model.calibration, "notes": list(model.notes), "root": root_path.name}

    @app.get("/api/scans")
    def scans(refresh: bool = False) -> dict:
        catalog = session.catalog(refresh=refresh)
        return {"root": root_path.name, "scans": [s.to_dict() for s in catalog.scans], "problems": catalog.problems}

    @app.get("/api/scan")
    def scan(path: str, series: str | None = None) -> dict:
        return session.describe(session.open(path, series or None))

    @app.get("/api/slice")
    def slice_png(path: str, index: int, width: float = Query(1500.0), level: float = Query(-600.0),
                  series: str | None = None) -> Response:
        png = session.slice_png(path, series or None, index, width, level)
        return Response(png, media_type="image/png", headers={"Cache-Control": "private, max-age=600"})

    @app.post("/api/predict")
    def predict(request: PredictRequest) -> dict:
        if request.nodule_id is not None:
            result = session.predict(request.path, request.series or None, nodule_id=request.nodule_id)
        elif None not in (request.column, request.row, request.slice):
            screen = (float(request.column), float(request.row), float(request.slice))  # type: ignore[arg-type]
            result = session.predict(request.path, request.series or None, screen=screen)
        else:
            raise InputError("say which nodule to predict: a click's column, row and slice, or a marked nodule's id")
        return result.to_dict()

    @app.get("/api/panel")
    def panel(path: str, id: str, series: str | None = None) -> Response:
        return Response(session.panel_png(path, series or None, id), media_type="image/png",
                        headers={"Cache-Control": "no-store"})

    @app.delete("/api/nodule")
    def remove(path: str, id: str, series: str | None = None) -> dict:
        session.remove(path, series or None, id)
        return {"removed": id, "nodules": [r.to_dict() for r in session.results(session.entry(path, series or None))]}

    @app.get("/api/download/{name}")
    def download(name: str, path: str, series: str | None = None) -> Response:
        content = session.download(path, series or None, name)
        name_here = Path(path).name
        suffix = image_suffix(name_here)
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", name_here[: -len(suffix)] if suffix else name_here).strip("._")
        filename = f"{stem or 'scan'}-{name}"
        return Response(content, media_type=MEDIA_TYPES.get(name, "application/octet-stream"),
                        headers={"Content-Disposition": f'attachment; filename="{filename}"'})

    return app
