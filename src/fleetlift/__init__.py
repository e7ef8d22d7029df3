"""fleetlift: update management for fleets of IoT gateways."""

__version__ = "0.1.0"
