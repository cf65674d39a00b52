"""Local mode: the hive of a resource file run as supervised processes on one machine."""
