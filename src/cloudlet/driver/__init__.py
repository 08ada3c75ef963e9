"""Drivers tell a hypervisor what to do: qemu/ for real VMs, fake/ for fast engine tests."""
