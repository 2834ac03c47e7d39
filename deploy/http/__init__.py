"""The HTTP routes of both ports, request parsing and limits, and the one table from errors to statuses."""
