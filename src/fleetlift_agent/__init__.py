"""fleetlift-agent: the device side of fleetlift. It shares only wire schemas with the server and
never imports it."""

__version__ = "0.1.0"
