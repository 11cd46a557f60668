"""`noduleclip serve`: a local web viewer of the CT scans under a folder, where a click on a nodule predicts it.

    from noduleclip.viewer import create_app
    app = create_app("demo-run/run", root="scans/")     # a FastAPI app; serve it with uvicorn

`geometry.py` shows a volume as axial slices in the radiological convention and maps a click back to world
millimetres; `catalog.py` lists what may be opened under the root (and refuses anything else); `session.py` keeps
the model warm, the open volumes in a small LRU and each scan's predicted nodules; `app.py` is the HTTP API and the
page (`static/`, plain HTML, JavaScript and CSS: nothing is fetched from the network).
"""

from noduleclip.viewer.app import create_app

__all__ = ["create_app"]
