"""NVMe-oF zoning: the fabric reads each NVMe/TCP Connect and admits or refuses the connection."""
