"""Importers: public datasets and crop folders -> the nodule manifest every stage reads.

- `import_lidc`: LIDC-IDRI XML reads + CT series -> manifest (world LPS centres, consensus ratings, masks).
- `read_lidc_ratings` / `lidc_ratings_table`: the consensus ratings of every LIDC nodule from the XML alone.
- `import_crops`: a folder of nodule crops with a CSV -> manifest.
- `import_luna`: a LUNA16-style nodule list + scans -> manifest.
"""

from noduleclip.importers.crops import import_crops
from noduleclip.importers.lidc import import_lidc, lidc_ratings_table, read_lidc_ratings, write_ratings
from noduleclip.importers.lidc_xml import LidcConfig
from noduleclip.importers.luna import import_luna

__all__ = ["LidcConfig", "import_lidc", "read_lidc_ratings", "lidc_ratings_table", "write_ratings", "import_crops",
           "import_luna"]
