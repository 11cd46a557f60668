"""The nodule manifest: paths, coordinates, labels and the errors that name the row."""

from __future__ import annotations

import numpy as np
import pytest

from noduleclip.data.manifest import NoduleManifest
from noduleclip.errors import InputError


def write(tmp_path, text: str):
    path = tmp_path / "sub" / "m.csv"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_reads_paths_coordinates_labels_and_features(tmp_path):
    path = write(tmp_path, "patient_id,nodule_id,image,coord_x,coord_y,coord_z,label,margins,cavitation\n"
                           "p1,n1,ct/a.nii.gz,-87.5,25.25,-119,1,spiculated,1\n"
                           "p1,n2,/abs/b.mha,,,,,smooth,\n")
    m = NoduleManifest.read(path)
    a, b = m
    assert a.image == path.parent / "ct" / "a.nii.gz" and b.image.as_posix() == "/abs/b.mha"
    np.testing.assert_allclose(a.coord, [-87.5, 25.25, -119.0])
    assert b.coord is None and a.label == 1 and b.label is None
    assert a.features["margins"] == "spiculated" and a.features["cavitation"] == "present"
    assert "cavitation" not in b.features  # missing stays missing, never "absent"


@pytest.mark.parametrize("body,message", [
    ("patient_id,nodule_id\np,n\n", "lacks the column(s) image"),
    ("patient_id,nodule_id,image\n", "no nodules"),
    ("patient_id,nodule_id,image\np,n,a\np,n,b\n", "repeats row 2"),
    ("patient_id,nodule_id,image,label\np,n,a,3\n", "label '3'"),
    ("patient_id,nodule_id,image,coord_x,coord_y,coord_z\np,n,a,1,,3\n", "all three"),
    ("patient_id,nodule_id,image,coord_x,coord_y,coord_z\np,n,a,1,2,abc\n", "not numbers"),
    ("patient_id,nodule_id,image,margins\np,n,a,wavy\n", "margins"),
])
def test_bad_rows_are_named(tmp_path, body, message):
    with pytest.raises(InputError, match=message.replace("(", r"\(").replace(")", r"\)")) as err:
        NoduleManifest.read(write(tmp_path, body))
    assert "m.csv" in str(err.value)


def test_unknown_feature_value_names_row_column_and_allowed_values(tmp_path):
    path = write(tmp_path, "patient_id,nodule_id,image,shape\np,n1,a,round\np,n2,a,starry\n")
    with pytest.raises(InputError) as err:
        NoduleManifest.read(path)
    text = str(err.value)
    assert "row 3" in text and "shape" in text and "starry" in text and "polygonal" in text


def test_write_then_read_round_trips(tmp_path):
    rows = [dict(patient_id="p", nodule_id="n", image="x.nii.gz", coord_x=-1.25, coord_y=2.5, coord_z=3.0, label=0,
                 consistency="part-solid")]
    path = NoduleManifest.write(tmp_path / "out.csv", rows)
    r = NoduleManifest.read(path)[0]
    assert r.label == 0 and r.features["consistency"] == "part-solid"
    np.testing.assert_allclose(r.coord, [-1.25, 2.5, 3.0])
    assert not list(tmp_path.glob(".*tmp*"))  # nothing half-written left behind
