"""The QEMU driver: argv from pure functions, detached processes, QMP and the guest agent."""
