"""Disks: qcow2 overlays on images today; pools and volumes later."""
