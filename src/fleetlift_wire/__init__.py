"""What the server and the agent must agree on, and nothing else: the agent never imports the
server (``fleetlift``), so shared wire formats live here."""
