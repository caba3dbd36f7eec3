"""Datastores of the app beyond MONAI Label's local folder: a PACS over DICOMweb (``pacs``), with
DICOM SEG in and out (``dicom_seg``) and volumes written as DICOM series (``series``)."""
