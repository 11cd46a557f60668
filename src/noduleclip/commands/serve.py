"""`noduleclip serve RUN --root DIR [--port 8000] [--host 127.0.0.1]`: a local web viewer where a click predicts."""

from __future__ import annotations

import ipaddress
import logging

from noduleclip.commands import summary


def register(sub) -> None:
    p = sub.add_parser(
        "serve", help=summary("serve"),
        description="Serve a web viewer of the CT scans under --root (DICOM series folders, NIfTI, MHA/MHD, NRRD): "
        "axial slices with lung and mediastinal windows, scrolled with the mouse wheel or the scroll bar. A click on "
        "a nodule predicts it with the trained run (loaded once at start-up): the nine views with their attention, "
        "the calibrated risk and the zero-shot semantic profile; the nodules a manifest under --root marks are shown "
        "and clickable; predictions.json/.csv and, for DICOM, the TID 1500 SR download for the listed nodules. Only "
        "files under --root can be opened. It listens on 127.0.0.1 unless --host says otherwise.")
    p.add_argument("run", help="run folder of `noduleclip train`")
    p.add_argument("--root", required=True, help="folder whose CT scans the viewer lists and opens (nothing outside)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default %(default)s)")
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default %(default)s: this machine only; 0.0.0.0 opens it to the "
                        "network, without any login)")
    p.add_argument("--open-scans", type=int, default=3, metavar="N",
                   help="how many scans to keep in memory at once (default %(default)s)")
    p.add_argument("--device", default="cpu", help="torch device for the models (default %(default)s)")
    p.set_defaults(func=run)


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def run(args) -> int:
    import uvicorn

    from noduleclip.errors import InputError
    from noduleclip.predict.api import NoduleClip
    from noduleclip.run_folder import check_run_complete
    from noduleclip.viewer import create_app

    if not 0 < args.port < 65536:
        raise InputError(f"--port {args.port} is not a TCP port; give a number from 1 to 65535")
    if args.open_scans < 1:
        raise InputError(f"--open-scans {args.open_scans} keeps no scan open; give 1 or more")
    for noisy in ("matplotlib", "highdicom"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    check_run_complete(args.run)
    print(f"loading {args.run} ...", flush=True)
    model = NoduleClip.load(args.run, device=args.device)
    app = create_app(args.run, args.root, model=model, capacity=args.open_scans)
    shown = f"[{args.host}]" if ":" in args.host else args.host
    print(f"noduleclip viewer: http://{shown}:{args.port}/  (scans under {args.root}; Ctrl-C stops it)", flush=True)
    if not _is_loopback(args.host):
        print(f"warning: --host {args.host} lets other machines on the network see these scans; there is no login",
              flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level="warning")
    return 0
