"""The DICOM node (`pneumo-desktop listen`): receive X-rays, score them, send results back as DICOM.

Qt-free. config (settings, peers, TOML), spool (the durable queue on disk), scp (the Storage SCP),
service (scorer and senders), results_dicom, sr_content and result_image (the SR and the Secondary
Capture, written with pydicom), results_csv, send (C-STORE, STOW-RS, C-ECHO), convert (a picture as a DX
instance), node (all together).
See docs/DICOM_NODE.md.
"""
