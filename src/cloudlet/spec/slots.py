"""Hot-plug slots, apart from the pydantic models so the driver's records load without them."""

# Data volumes (and hot-plugged NICs) a VM can have: modern machines get one spare PCIe
# root port for each.
HOTPLUG_SLOTS = 4
