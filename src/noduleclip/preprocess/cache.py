"""The preprocessed cache: the nine views of every nodule, backbone-independent.

One compressed `.npz` per nodule under `CACHE/views/`, holding the views as float16 and the
nodule's metadata (ids, centre in LPS mm, the manifest fields the views were computed from).
`CACHE/cache.json` records the view settings; a cache made with other settings is refused.
A nodule is up to date when its file exists and its stored source fields match the manifest row.
Every file is written under a hidden temporary name and renamed into place; the temporary files that
a killed run leaves are removed by the next `preprocess_manifest` on the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from noduleclip.atomic import atomic_path, write_text
from noduleclip.data.manifest import NoduleRecord
from noduleclip.errors import InputError
from noduleclip.preprocess.views import ViewConfig

CACHE_FORMAT = 1


def source_key(record: NoduleRecord) -> dict:
    """The manifest fields that determine a nodule's views."""
    return {
        "image": str(Path(record.image).resolve()),
        "coord": None if record.coord is None else [round(float(c), 4) for c in record.coord],
        "mask": None if record.mask is None else str(Path(record.mask).resolve()),
    }


class ViewCache:
    """A folder of per-nodule views made with one `ViewConfig`."""

    def __init__(self, root: str | os.PathLike, config: ViewConfig = ViewConfig(), create: bool = True):
        self.root = Path(root)
        self.config = config
        meta_path = self.root / "cache.json"
        wanted = {"format": CACHE_FORMAT, "views": config.to_dict()}
        if meta_path.exists():
            try:
                found = json.loads(meta_path.read_text())
            except json.JSONDecodeError:
                raise InputError(f"{meta_path} is not valid JSON; delete the cache folder {self.root} to rebuild "
                                 "it") from None
            if found != wanted:
                raise InputError(
                    f"cache {self.root} was made with other settings ({found.get('views')}); "
                    f"use another cache folder or delete this one to rebuild it with {config.to_dict()}"
                )
        elif create:
            if self.root.exists() and not self.root.is_dir():
                raise InputError(f"cache path {self.root} is a file; give a folder for the cache")
            (self.root / "views").mkdir(parents=True, exist_ok=True)
            write_text(meta_path, json.dumps(wanted, indent=2))
        else:
            raise InputError(f"{self.root} is not a view cache (no cache.json); run `noduleclip preprocess` first")

    def path_for(self, nodule_id: str) -> Path:
        safe = re.sub(r"[^A-Za-z0-9._-]+", "_", nodule_id)[:80]
        digest = hashlib.sha1(nodule_id.encode()).hexdigest()[:8]
        return self.root / "views" / f"{safe}-{digest}.npz"

    def read_meta(self, nodule_id: str) -> dict | None:
        path = self.path_for(nodule_id)
        if not path.exists():
            return None
        try:
            with np.load(path) as data:
                return json.loads(str(data["meta"]))
        except Exception:  # a damaged file is simply recomputed
            return None

    def is_current(self, record: NoduleRecord) -> bool:
        meta = self.read_meta(record.nodule_id)
        return meta is not None and meta.get("source") == source_key(record)

    def save(self, record: NoduleRecord, views: np.ndarray, center_lps: np.ndarray, extra: dict | None = None) -> Path:
        meta = {
            "nodule_id": record.nodule_id,
            "patient_id": record.patient_id,
            "center_lps": [float(c) for c in center_lps],
            "source": source_key(record),
            **(extra or {}),
        }
        path = self.path_for(record.nodule_id)
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as fh:
                np.savez_compressed(fh, views=views.astype(np.float16), meta=np.array(json.dumps(meta)))
        return path

    def remove_stale_temporaries(self, before: float) -> list[Path]:
        """Delete the hidden temporary files of writes that began before the time `before` (from a killed run)."""
        removed = []
        for folder in (self.root, self.root / "views"):
            if not folder.is_dir():
                continue
            for path in folder.glob(".*.tmp*"):
                try:
                    if path.is_file() and path.stat().st_mtime < before:
                        path.unlink()
                        removed.append(path)
                except FileNotFoundError:  # finished or removed meanwhile
                    continue
        return removed

    def load(self, nodule_id: str) -> np.ndarray:
        """The nine views of one nodule as float32 (9, size, size)."""
        path = self.path_for(nodule_id)
        if not path.exists():
            raise InputError(f"nodule {nodule_id!r} is not in the cache {self.root}; run `noduleclip preprocess` on "
                             "its manifest")
        with np.load(path) as data:
            return data["views"].astype(np.float32)

    def load_many(self, nodule_ids) -> np.ndarray:
        """Views of many nodules stacked as float32 (N, 9, size, size)."""
        ids = list(nodule_ids)
        out = np.empty((len(ids), 9, self.config.size, self.config.size), dtype=np.float32)
        for i, nid in enumerate(ids):
            out[i] = self.load(nid)
        return out
