"""Images in, label maps out: case discovery, checks before voxels, reading, writing.

- cases: which files make a case (the one list of image file endings; channels; DICOM series folders)
- checks: headers checked before any voxel is read (size cap, spacing, affine, direction, truncation)
- read: validated voxels and properties through nnU-Net's SimpleITKIO (DICOM series through GDCM)
- write: label maps through nnU-Net's SimpleITKIO writer and probabilities, atomically

Predict, reports and dataset conversion all use these, so a file means the same thing everywhere.
"""

from medmamba.io.cases import (
    IMAGE_ENDINGS,
    NIFTI_ENDINGS,
    CaseInput,
    case_name,
    collect_cases,
    dicom_series,
    image_stem,
    strip_ending,
)
from medmamba.io.checks import (
    Header,
    check_geometry,
    check_header,
    check_metaimage_complete,
    check_nifti_complete,
    check_nifti_header,
    itk_reason,
    read_header,
)
from medmamba.io.read import DEFAULT_MAX_VOXELS, read_case, read_case_input, read_dicom_case, read_image
from medmamba.io.write import output_complete, write_label_map, write_probabilities

__all__ = ["DEFAULT_MAX_VOXELS", "IMAGE_ENDINGS", "NIFTI_ENDINGS", "CaseInput", "Header", "case_name",
           "check_geometry", "check_header", "check_metaimage_complete", "check_nifti_complete",
           "check_nifti_header", "collect_cases", "dicom_series", "image_stem", "itk_reason",
           "output_complete", "read_case", "read_case_input", "read_dicom_case", "read_header", "read_image",
           "strip_ending", "write_label_map", "write_probabilities"]
